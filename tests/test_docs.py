"""The documentation: the site builds with `mkdocs build --strict` and every tutorial notebook runs.

The site build executes the notebooks too (mkdocs-jupyter, `execute: true` in mkdocs.yml), so a broken
notebook fails both tests; the nbclient test names the notebook and the failing cell. Notebooks are stored
without outputs, so outputs on the built page prove that the build executed them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"docs tooling missing ({', '.join(missing)}): install it with  pip install -e '.[docs]'")


def _quiet_blas(env: dict) -> dict:
    """The tutorials multiply small matrices: one BLAS thread is as fast, and avoids oversubscribing the cores
    when other tests run beside them."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


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


def test_mkdocs_build_strict(tmp_path):
    _require("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter", "nbconvert")
    site = tmp_path / "site"
    env = _quiet_blas(dict(os.environ))
    env["ADALOOP_DOCS_EXECUTE"] = "true"  # always execute the notebooks here, whatever the caller's shell says
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"

    reference = (site / "reference" / "index.html").read_text()
    assert reference.count('class="arithmatex"') > 50, "the equations on the reference page were not rendered"
    assert "mathjax" in reference.lower()
    api = (site / "api" / "index.html").read_text()
    for name in ("reference.halting.act", "reference.model.forward", "reference.contraction.lipschitz"):
        assert f'id="{name}"' in api, f"{name} is missing from the API page"
    for nb_path in NOTEBOOKS:
        page = (site / "tutorials" / nb_path.stem / "index.html").read_text()
        assert "jp-OutputArea-output" in page, f"{nb_path.name}: the built page shows no cell outputs"
        assert not re.search(r'<div[^>]*data-mime-type="application/vnd\.jupyter\.stderr"', page), \
            f"{nb_path.name}: the built page shows an error, a warning or other stderr output"
    tutorial = (site / "tutorials" / "01_looped_block_and_act" / "index.html").read_text()
    assert tutorial.count("data:image/png") >= 3, "the tutorial's plots are missing from the built page"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(nb_path, monkeypatch):
    _require("nbclient", "nbformat", "ipykernel")
    import nbformat
    from nbclient import NotebookClient

    for var, value in _quiet_blas({}).items():
        if var not in os.environ:
            monkeypatch.setenv(var, value)  # the kernel inherits this process's environment
    nb = nbformat.read(nb_path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(nb_path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{nb_path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
