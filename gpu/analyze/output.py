"""Where an analysis writes: RUN/analysis/NAME[_suffix].csv, NAME.md, NAME.png (+ extra files), each atomically;
the Markdown header naming the run, and the output file stem for a given data folder and split."""
from __future__ import annotations

import io
import os

from reference.files import atomic_write_bytes

from ..stats import write_csv
from .plotting import pyplot


def write_outputs(run_dir, name: str, tables: dict, md: str, fig=None, extra: dict | None = None) -> list[str]:
    """tables: suffix ('' for the main one) -> rows. Writes RUN/analysis/NAME[_suffix].csv, NAME.md, NAME.png
    and extra files (file name -> bytes), each atomically. Returns the paths."""
    out = os.path.join(os.fspath(run_dir), "analysis")
    os.makedirs(out, exist_ok=True)
    paths = [write_csv(os.path.join(out, f"{name}{'_' + s if s else ''}.csv"), rows) for s, rows in tables.items()]
    atomic_write_bytes(os.path.join(out, f"{name}.md"), md.encode())
    paths.append(os.path.join(out, f"{name}.md"))
    if fig is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        pyplot().close(fig)
        atomic_write_bytes(os.path.join(out, f"{name}.png"), buf.getvalue())
        paths.append(os.path.join(out, f"{name}.png"))
    for fname, data in (extra or {}).items():
        atomic_write_bytes(os.path.join(out, fname), data)
        paths.append(os.path.join(out, fname))
    return paths


def header(title: str, run, ev, split: str) -> str:
    """The Markdown title and the line naming the run, its checkpoint, halting and depth, and the windows measured."""
    W, T = ev.x.shape
    return (f"# {title}\n\nrun `{run.path}` (checkpoint step {run.step}; {run.cfg.halt} halting, {run.cfg.loop_scope} "
            f"scope, max_loops K = {run.cfg.max_loops}) on `{run.data_dir}` {split}: {W} windows x {T} tokens.\n\n")


def out_name(base: str, data: str | None, split: str = "val") -> str:
    """Output file stem: `base`, suffixed with the data folder's name when --data points elsewhere than the run's
    own data and with the split when it is not val, so analyses of one run on several sets sit side by side."""
    name = base + (f"-{os.path.basename(os.path.normpath(data))}" if data else "")
    return name + (f"-{split}" if split != "val" else "")
