"""Checkpoints: one folder per step (weights as safetensors, optimizer state, loop state, checksums), written
atomically and verified on load.

run/checkpoints/step-0000200/{model.safetensors, optim.pt, state.json, checksums.json} is written under a temporary
name and renamed into place (reference.files.atomic_folder), so a run killed at any moment leaves only complete
checkpoints behind. checksums.json (written last) holds the sha256 of every other file; loading recomputes them,
so a file changed or damaged on disk is refused instead of loaded. Weights that are not finite are never written,
and never loaded. A checkpoint from before checksums (no checksums.json) loads with a one-line notice.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
import time

import numpy as np
import torch

from reference.config import LoopConfig
from reference.files import atomic_folder, atomic_write_json
from reference.weights import load_params, save_params

from .cli import read_json

_STEP_DIR = re.compile(r"^step-(\d{7})$")
CHECKSUMS = "checksums.json"
FILES = ("model.safetensors", "optim.pt", "state.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: a file missing or unreadable, a checksum that does not match, weights
    that are not finite. Resuming skips it for an older one."""


def checkpoint_dir(run_dir) -> str:
    return os.path.join(os.fspath(run_dir), "checkpoints")


def list_checkpoints(run_dir) -> list[str]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not os.path.isdir(root):
        return []
    steps = sorted(name for name in os.listdir(root) if _STEP_DIR.match(name))
    return [os.path.join(root, name) for name in steps]


def latest_checkpoint(run_dir) -> str | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def step_of(path) -> int:
    return int(_STEP_DIR.match(os.path.basename(os.fspath(path))).group(1))


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read 4 MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def non_finite(params: dict) -> list[str]:
    """Names of the arrays holding a NaN or an infinity."""
    return [k for k, v in params.items() if not np.isfinite(np.asarray(v)).all()]


def save_checkpoint(run_dir, step: int, params: dict, cfg: LoopConfig, optimizer_state: dict, state: dict,
                    keep_last: int) -> str:
    """Write checkpoint `step` atomically (replacing one of the same step) with the checksums of its files, then
    delete all but the newest `keep_last` (never the one just written). Returns its folder. CheckpointError for
    non-finite weights (nothing is written); OSError naming the checkpoint when the disk refuses the write (the
    earlier checkpoints are untouched)."""
    bad = non_finite(params)
    if bad:
        raise CheckpointError(f"refusing to write checkpoint step {step}: the weights {bad[:3]} are not finite")
    final = os.path.join(checkpoint_dir(run_dir), f"step-{step:07d}")
    try:
        with atomic_folder(final, overwrite=True) as tmp:
            save_params(os.path.join(tmp, "model.safetensors"), params, cfg)
            torch.save(optimizer_state, os.path.join(tmp, "optim.pt"))
            atomic_write_json(os.path.join(tmp, "state.json"), dict(state, step=step), indent=None)
            sums = {name: sha256_file(os.path.join(tmp, name)) for name in FILES}
            atomic_write_json(os.path.join(tmp, CHECKSUMS), dict(algorithm="sha256", files=sums))
    except (OSError, RuntimeError) as err:  # RuntimeError: torch.save's zip writer on a full disk ("unexpected pos")
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
        raise OSError(code, f"could not write checkpoint {final} ({reason}); is the disk full? The earlier "
                            f"checkpoints are intact: free some space and continue with --resume") from None
    prune(run_dir, keep_last, keep=final)
    return final


def prune(run_dir, keep_last: int, keep: str) -> None:
    """Delete all but the newest `keep_last` checkpoints, never `keep` (the newest verified one: the one just
    written and hashed)."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if os.path.abspath(old) != os.path.abspath(keep):
            shutil.rmtree(old, ignore_errors=True)


def _notice(message: str) -> None:
    print("\n" + message if sys.stderr.isatty() else message, file=sys.stderr, flush=True)


def verify(path) -> bool:
    """True when every file matches checksums.json, False for a checkpoint without one (written before checksums);
    CheckpointError naming the file that is missing or changed."""
    sums_path = os.path.join(path, CHECKSUMS)
    if not os.path.isfile(sums_path):
        return False
    try:
        sums = read_json(sums_path)["files"]
        items = list(sums.items())
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: {CHECKSUMS} is damaged ({err})") from None
    for name, digest in items:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if sha256_file(full) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its sha256 (changed or damaged on disk)")
    return True


def load_checkpoint(path, cfg: LoopConfig | None = None, notify=_notice) -> tuple[dict, LoopConfig, dict, dict]:
    """(numpy params, model config, optimizer state, loop state), checksums verified and weights checked finite.
    CheckpointError (a ValueError) naming the problem and the fix for a damaged one."""
    path = os.fspath(path)
    fix = "resume falls back to an earlier checkpoint (or pass --resume-from STEP), or start a new run"
    try:
        verified = verify(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {fix}") from None
    if not verified:
        notify(f"notice: checkpoint {path} has no {CHECKSUMS} (written before checksums): loading it unverified")
    try:
        params, cfg = load_params(os.path.join(path, "model.safetensors"), cfg)
        optimizer_state = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=True)
        state = read_json(os.path.join(path, "state.json"))
        step, _ = int(state["step"]), state["rng"]
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path!r} is corrupted or incomplete ({err}); {fix}") from None
    bad = non_finite(params)
    if bad:
        raise CheckpointError(f"checkpoint {path!r} holds non-finite weights ({', '.join(bad[:3])}); {fix}")
    if _STEP_DIR.match(os.path.basename(path)) and step != step_of(path):
        raise CheckpointError(f"checkpoint {path!r}: its state.json says step {step}; {fix}")
    return params, cfg, optimizer_state, state


def newest_intact(run_dir, cfg: LoopConfig | None = None, notify=_notice):
    """(path, loaded, skipped): the newest checkpoint that loads (load_checkpoint's tuple), and the newer ones that
    did not as (path, reason). (None, None, skipped) when none does."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, cfg, notify), skipped
        except CheckpointError as err:
            skipped.append((path, str(err)))
    return None, None, skipped


def set_aside(run_dir, paths: list[str], label: str) -> str:
    """Move checkpoint folders out of the way (not deleted) into RUN/checkpoints/{label}-{time}/; returns it."""
    base, n = os.path.join(checkpoint_dir(run_dir), f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"), 1
    folder = base
    while os.path.exists(folder):
        n += 1
        folder = f"{base}-{n}"
    os.makedirs(folder)
    for p in paths:
        os.replace(p, os.path.join(folder, os.path.basename(p)))
    return folder
