"""Checkpoints: one folder per step (weights as safetensors, optimizer state, loop state), written atomically.

run/checkpoints/step-0000200/{model.safetensors, optim.pt, state.json} is written under a temporary name and
renamed into place (reference.files.atomic_folder), so a run killed at any moment leaves only complete checkpoints
behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch

from reference.config import LoopConfig
from reference.files import atomic_folder
from reference.weights import load_params, save_params

_STEP_DIR = re.compile(r"^step-(\d{7})$")


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


def save_checkpoint(run_dir, step: int, params: dict, cfg: LoopConfig, optimizer_state: dict, state: dict,
                    keep_last: int) -> str:
    """Write checkpoint `step` atomically (replacing one of the same step), then delete all but the newest
    `keep_last`. Returns its folder."""
    final = os.path.join(checkpoint_dir(run_dir), f"step-{step:07d}")
    with atomic_folder(final, overwrite=True) as tmp:
        save_params(os.path.join(tmp, "model.safetensors"), params, cfg)
        torch.save(optimizer_state, os.path.join(tmp, "optim.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(dict(state, step=step), f)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path, cfg: LoopConfig | None = None) -> tuple[dict, LoopConfig, dict, dict]:
    """(numpy params, model config, optimizer state, loop state). ValueError with the fix for a damaged one."""
    try:
        params, cfg = load_params(os.path.join(path, "model.safetensors"), cfg)
        optimizer_state = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
    except (OSError, RuntimeError, json.JSONDecodeError, EOFError) as err:
        raise ValueError(f"checkpoint {path!r} is corrupted or incomplete ({err}); delete it to resume from the "
                         f"one before, or start a new run") from None
    return params, cfg, optimizer_state, state
