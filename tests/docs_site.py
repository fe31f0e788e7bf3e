"""The docs site, built once per test session: tests/test_docs.py checks the files, tests/test_browser.py reads
the pages in a browser. Building executes every notebook (mkdocs-jupyter), so the two share one build."""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLING = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter", "nbconvert")
_built: dict[str, object] = {}


def require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"docs tooling missing ({', '.join(missing)}): install it with  pip install -e '.[docs]'")


def quiet_blas(env: dict) -> dict:
    """The tutorials multiply small matrices: one BLAS thread is as fast, and avoids oversubscribing the cores
    when other tests run beside them."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def build_site() -> Path:
    """`mkdocs build --strict` into a temporary folder (removed at exit), notebooks executed. Built once per
    process; a failed build fails every caller with the same message, without building again."""
    if "error" in _built:
        pytest.fail(str(_built["error"]))
    if "site" in _built:
        return _built["site"]  # type: ignore[return-value]
    require(*TOOLING)
    tmp = tempfile.mkdtemp(prefix="adaloop-site-")
    atexit.register(shutil.rmtree, tmp, True)
    site = Path(tmp) / "site"
    env = quiet_blas(dict(os.environ))
    env["ADALOOP_DOCS_EXECUTE"] = "true"  # always execute the notebooks here, whatever the caller's shell says
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        _built["error"] = f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        pytest.fail(str(_built["error"]))
    _built["site"] = site
    return site
