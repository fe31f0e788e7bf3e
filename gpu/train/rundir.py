"""The run folder (--out) before a run starts: never written into without --resume or --overwrite, a resumed run
adopts its saved settings and must compute the same thing, and --overwrite replaces a run in one rename.

A folder holds a run when it has config.json, metrics.jsonl or checkpoints/. Without --resume or --overwrite such a
folder is refused (so is a non-empty folder that holds no run: its files are not ours to mix with). --overwrite moves
the old run aside in one rename, creates the new folder and only then deletes the old one: a crash leaves either the
old run (under a hidden `.overwritten-*` name beside it) or the new one, never a mix.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

from reference.config import LoopConfig
from reference.files import atomic_write_json

from ..cli import read_json
from ..config import RESUMABLE_CHANGES, TrainConfig
from .device import Dist

RUN_MARKERS = ("config.json", "metrics.jsonl", "checkpoints")
RUN_FILES = {*RUN_MARKERS, "report.md", "depth_hist.png", "tensorboard", "analysis"}  # what --overwrite may delete


def holds_run(out) -> bool:
    return any(os.path.exists(os.path.join(out, name)) for name in RUN_MARKERS)


def read_saved(out) -> dict:
    """RUN/config.json as {"model": {...}, "train": {...}}; ValueError naming the file and the fix."""
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {out!r} holds no run (no config.json); drop --resume to start one")
    saved = read_json(path, "the run's settings are unreadable: start a new run in another --out")
    if not (isinstance(saved, dict) and isinstance(saved.get("model"), dict) and isinstance(saved.get("train"), dict)):
        raise ValueError(f"{path}: expected an object with 'model' and 'train' settings; start a new run in another "
                         f"--out")
    return saved


def saved_configs(out) -> tuple[TrainConfig, LoopConfig]:
    """The TrainConfig and LoopConfig a run was started with (fields it predates take their defaults)."""
    saved = read_saved(out)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        tc = TrainConfig(**{k: v for k, v in saved["train"].items() if k in known})
        mc = LoopConfig.from_dict(saved["model"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{os.path.join(out, 'config.json')}: {err}") from None
    return tc, mc


def adopt_saved(tc: TrainConfig, mc: LoopConfig, explicit_train: set, explicit_model: set):
    """--resume from the command line: the run's saved settings, with the flags given now applied on top. A flag that
    would change what the run computes (outside RESUMABLE_CHANGES) is a ValueError listing each one."""
    saved_tc, saved_mc = saved_configs(tc.out)
    problems = [f"--{k.replace('_', '-')}={getattr(tc, k)!r} (the run has {getattr(saved_tc, k)!r})"
                for k in sorted(explicit_train - RESUMABLE_CHANGES) if getattr(tc, k) != getattr(saved_tc, k)]
    problems += [f"--{k.replace('_', '-')}={getattr(mc, k)!r} (the run has {getattr(saved_mc, k)!r})"
                 for k in sorted(explicit_model) if getattr(mc, k) != getattr(saved_mc, k)]
    if problems:
        raise ValueError("--resume continues the run with its saved settings; these flags would change what it "
                         "computes: " + "; ".join(problems) + ". Drop them, or start a new run in another --out")
    given = {k: getattr(tc, k) for k in explicit_train | {"out", "resume", "resume_from", "overwrite"}}
    return dataclasses.replace(saved_tc, **given), saved_mc


def check_resumable(run_dir, tc: TrainConfig, mc) -> None:
    """A resumed run must compute the same thing: same model config, same training fields except RESUMABLE_CHANGES."""
    saved = read_saved(run_dir)
    problems = [f"{k}: run has {v!r}, now {getattr(mc, k)!r}" for k, v in saved["model"].items()
                if hasattr(mc, k) and getattr(mc, k) != v]
    problems += [f"{k}: run has {v!r}, now {getattr(tc, k)!r}" for k, v in saved["train"].items()
                 if hasattr(tc, k) and k not in RESUMABLE_CHANGES and getattr(tc, k) != v]
    if problems:
        raise ValueError("--resume with an incompatible config: " + "; ".join(problems)
                         + ". Resume with the run's settings or start a new run in another --out.")


def check_out(tc: TrainConfig) -> None:
    """Refuse an --out a new run must not write into (see the module docstring); reads only."""
    out = tc.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out={out!r} exists and is not a folder: choose another --out")
    entries = sorted(e for e in os.listdir(out) if not e.startswith(".tmp-")) if os.path.isdir(out) else []
    if not entries:  # new, empty, or only the temporary files of an interrupted write
        return
    if not holds_run(out):
        raise ValueError(f"--out={out!r} is not empty and holds no run ({', '.join(entries[:5])}): choose a new or "
                         f"empty folder")
    if not tc.overwrite:
        found = [e for e in RUN_MARKERS if e in entries]
        raise ValueError(f"--out={out!r} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out")
    foreign = [e for e in entries if e not in RUN_FILES]
    if foreign:
        raise ValueError(f"--overwrite: {out!r} also holds files that are not the run's ({', '.join(foreign[:5])}): "
                         f"move them out first, or choose another --out")


def replace_run(out) -> None:
    """--overwrite: the old run leaves `out` in one rename, then is deleted."""
    out = os.path.abspath(out)
    aside = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".overwritten-{os.path.basename(out)}-")
    os.replace(out, os.path.join(aside, "run"))
    os.makedirs(out)
    shutil.rmtree(aside, ignore_errors=True)


def prepare_run_dir(tc: TrainConfig, mc, dist: Dist) -> None:
    """Check --out on every rank (read only), then on rank 0 replace an old run with --overwrite."""
    if tc.resume:
        check_resumable(tc.out, tc, mc)
    else:
        check_out(tc)
    dist.barrier()
    if dist.main and tc.overwrite and os.path.isdir(tc.out) and holds_run(tc.out):
        replace_run(tc.out)
        print(f"--overwrite: replaced the run in {tc.out}", flush=True)
    dist.barrier()


def write_config(tc: TrainConfig, mc, dist: Dist) -> None:
    """RUN/config.json (rank 0), once the run's start state is settled."""
    if dist.main:
        os.makedirs(tc.out, exist_ok=True)
        atomic_write_json(os.path.join(tc.out, "config.json"), dict(model=mc.to_dict(), train=tc.to_dict()))
