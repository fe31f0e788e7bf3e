"""The documentation: the site builds with `mkdocs build --strict` and every tutorial notebook runs.

The site build executes the notebooks too (mkdocs-jupyter, `execute: true` in mkdocs.yml), so a broken
notebook fails both tests; the nbclient test names the notebook and the failing cell. Notebooks are stored
without outputs, so outputs on the built page prove that the build executed them. The site is built once per
session (tests/docs_site.py) and also read in a real browser by tests/test_browser.py.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from docs_site import ROOT, build_site, quiet_blas, require

TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED_TUTORIALS = 6
CELL_TIMEOUT_S = 300
LINE_WIDTH = 88    # the widest code or output line a notebook page shows without scrolling sideways
OUTPUT_LINES = 30  # the most text lines one cell may print: outputs stay short, plots carry the rest

pytestmark = pytest.mark.slow


def test_tutorials_exist_are_in_the_nav_and_stored_without_outputs():
    assert NOTEBOOKS, f"no notebook in {TUTORIALS}"
    assert (ROOT / "docs" / "tutorials").resolve() == TUTORIALS.resolve(), \
        "docs/tutorials must be a symlink to ../tutorials (that is how the site finds the notebooks)"
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text()
    for nb_path in NOTEBOOKS:
        assert f"tutorials/{nb_path.name}" in mkdocs_yml, f"{nb_path.name} is not in the nav of mkdocs.yml"
        nb = json.loads(nb_path.read_text())
        dirty = [i for i, c in enumerate(nb["cells"])
                 if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
        assert not dirty, (f"{nb_path.name}: code cells {dirty} carry outputs; clear them "
                           f"(jupyter nbconvert --clear-output --inplace {nb_path.relative_to(ROOT)})")
    assert len(NOTEBOOKS) >= EXPECTED_TUTORIALS, f"expected {EXPECTED_TUTORIALS} tutorials, found {len(NOTEBOOKS)}"
    index = (ROOT / "docs" / "index.md").read_text()
    assert f"(tutorials/{NOTEBOOKS[0].name})" in index, "the home page must link to tutorial 1"


def _cells(nb_path, kind):
    return [(i, "".join(c["source"])) for i, c in enumerate(json.loads(nb_path.read_text())["cells"])
            if c["cell_type"] == kind]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_code_lines_fit_the_page(nb_path):
    """A code line wider than LINE_WIDTH scrolls sideways on the site; Black's 88 columns fit."""
    wide = [f"cell {i}, line {n + 1} ({len(line)} chars): {line[:60]}..."
            for i, src in _cells(nb_path, "code") for n, line in enumerate(src.splitlines())
            if len(line) > LINE_WIDTH]
    assert not wide, f"{nb_path.name}: code lines over {LINE_WIDTH} characters:\n" + "\n".join(wide)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_ends_with_what_to_try_next(nb_path):
    markdown = _cells(nb_path, "markdown")
    assert markdown, f"{nb_path.name} has no text"
    last_heading = [ln for _, src in markdown for ln in src.splitlines() if ln.startswith("#")][-1]
    assert "what to try next" in last_heading.lower(), \
        f"{nb_path.name}: the last section should be 'What to try next', not {last_heading!r}"


def test_mkdocs_build_strict():
    site = build_site()

    reference = (site / "reference" / "index.html").read_text()
    assert reference.count('class="arithmatex"') > 50, "the equations on the reference page were not rendered"
    # the math renderer is the site's own copy (hooks/mathjax.py), never a CDN: math renders offline
    assert (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").is_file(), "MathJax was not copied into the site"
    assert "javascripts/mathjax/tex-mml-chtml.js" in reference
    for page in site.rglob("*.html"):
        remote = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]+)"',
                            page.read_text())
        assert not remote, f"{page.relative_to(site)} loads {remote[0]} from the network"
    broken = [f"{page.relative_to(site)} -> {href}" for page in site.rglob("*.html")
              for href in _local_links(page) if not _resolves(site, page, href)]
    assert not broken, "links to pages or files that do not exist:\n" + "\n".join(broken[:20])
    api = (site / "api" / "index.html").read_text()
    for name in ("reference.halting.act", "reference.model.forward", "reference.contraction.lipschitz"):
        assert f'id="{name}"' in api, f"{name} is missing from the API page"
    for nb_path in NOTEBOOKS:
        page = (site / "tutorials" / nb_path.stem / "index.html").read_text()
        assert "jp-OutputArea-output" in page, f"{nb_path.name}: the built page shows no cell outputs"
        assert not re.search(r'<div[^>]*data-mime-type="application/vnd\.jupyter\.stderr"', page), \
            f"{nb_path.name}: the built page shows an error, a warning or other stderr output"
        assert "data:image/png" in page, f"{nb_path.name}: the built page shows no figure"
    tutorial = (site / "tutorials" / "01_looped_block_and_act" / "index.html").read_text()
    assert tutorial.count("data:image/png") >= 3, "the tutorial's plots are missing from the built page"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(nb_path, monkeypatch):
    require("nbclient", "nbformat", "ipykernel")
    import nbformat
    from nbclient import NotebookClient

    for var, value in quiet_blas({}).items():
        if var not in os.environ:
            monkeypatch.setenv(var, value)  # the kernel inherits this process's environment
    nb = nbformat.read(nb_path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(nb_path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{nb_path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = [ln for o in cell.get("outputs", []) for ln in _text_of(o).splitlines()]
        assert len(lines) <= OUTPUT_LINES, \
            f"{nb_path.name}, cell {i}: {len(lines)} lines of output (at most {OUTPUT_LINES}: plot or trim it)"
        wide = [ln for ln in lines if len(ln) > LINE_WIDTH]
        assert not wide, f"{nb_path.name}, cell {i}: output lines over {LINE_WIDTH} characters: {wide[0]!r}"


def _local_links(page: Path) -> set[str]:
    """The href/src targets of a built page that point into the site (notebook Markdown links included,
    which mkdocs does not check)."""
    targets = re.findall(r'\b(?:href|src)="([^"#?]*)', page.read_text())
    return {t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:|^//", t)}


def _resolves(site: Path, page: Path, href: str) -> bool:
    target = (site / href.lstrip("/")) if href.startswith("/") else (page.parent / href)
    return target.is_file() or (target / "index.html").is_file()


def _text_of(output) -> str:
    """The text a cell output shows on the page (stream text, or the plain text of a result without HTML)."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    if "text/html" in data or "image/png" in data:
        return ""
    text = data.get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text
