"""mkdocs hook: the site serves its own copy of MathJax, so equations render with no network.

MathJax comes from the npm package `mathjax` (version 3), which `make install` installs into
build/mathjax/node_modules/mathjax (build/ is not committed). At build time this hook adds the parts of the
package the pages need to the site under javascripts/mathjax/: the combined component tex-mml-chtml.js (TeX
input, CommonHTML output), the TeX extensions it loads on demand, the CHTML fonts, the menu and the
accessibility components. mkdocs.yml loads javascripts/mathjax.js (the configuration, read by Markdown pages
and by the notebook pages of mkdocs-jupyter alike) and then javascripts/mathjax/tex-mml-chtml.js.

ADALOOP_MATHJAX=DIR uses another copy of the package (a folder holding es5/tex-mml-chtml.js and package.json).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "build" / "mathjax" / "node_modules" / "mathjax"
SITE_DIR = "javascripts/mathjax"  # where the files land in the site
ENTRY = "tex-mml-chtml.js"
PARTS = [ENTRY, "input/tex/extensions", "output/chtml", "ui", "a11y"]


def package_dir() -> Path:
    """The MathJax package folder, checked: MathJax 3 with its es5 build. Raises PluginError naming the fix."""
    pkg = Path(os.environ.get("ADALOOP_MATHJAX") or DEFAULT)
    manifest = pkg / "package.json"
    if not (pkg / "es5" / ENTRY).is_file() or not manifest.is_file():
        raise PluginError(
            f"MathJax not found at {pkg}: the site serves its own copy of the math renderer. Install it with "
            "`make install` (it runs `npm install --prefix build/mathjax mathjax@3.2.2`; needs node and npm), "
            "or point ADALOOP_MATHJAX at a folder of the npm package `mathjax` version 3.")
    version = json.loads(manifest.read_text()).get("version", "?")
    if not version.startswith("3."):
        raise PluginError(f"MathJax {version} at {pkg}: docs/javascripts/mathjax.js configures MathJax 3; "
                          "run `make install` to install the pinned 3.x version")
    return pkg


def on_files(files: Files, config, **kwargs) -> Files:
    """Add the MathJax files to the build (so `mkdocs build` and `mkdocs serve` both serve them)."""
    es5 = package_dir() / "es5"
    for part in PARTS:
        src = es5 / part
        paths = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for path in paths:
            uri = f"{SITE_DIR}/{path.relative_to(es5).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    licence = es5.parent / "LICENSE"
    if licence.is_file():
        files.append(File.generated(config, f"{SITE_DIR}/LICENSE", abs_src_path=str(licence)))
    return files
