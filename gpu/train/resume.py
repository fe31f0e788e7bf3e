"""The run folder across restarts: refuse to overwrite a run, check that a resumed one computes the same thing,
the state a run starts from (fresh or its last checkpoint), and the checkpoint a run saves."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

import reference
from reference.files import atomic_write_json

from .. import checkpoint as ckpt
from ..config import RESUMABLE_CHANGES, TrainConfig
from .device import Dist
from .distributed import full_state


@dataclass
class StartState:
    """Where the step loop starts: weights (numpy, by reference name), optimizer state (None for a fresh run), the
    first step, the batch rng, and the checkpoint it was read from (None for a fresh run)."""

    params: dict
    opt_state: dict | None
    step: int
    rng: np.random.Generator
    checkpoint: str | None


def check_resumable(run_dir, tc: TrainConfig, mc) -> None:
    """A resumed run must compute the same thing: same model config, same training fields except RESUMABLE_CHANGES."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {run_dir!r} holds no run (no config.json); drop --resume to start one")
    with open(path) as f:
        saved = json.load(f)
    problems = [f"{k}: run has {v!r}, now {getattr(mc, k)!r}" for k, v in saved["model"].items() if getattr(mc, k) != v]
    problems += [f"{k}: run has {v!r}, now {getattr(tc, k)!r}" for k, v in saved["train"].items()
                 if k not in RESUMABLE_CHANGES and getattr(tc, k) != v]
    if problems:
        raise ValueError("--resume with an incompatible config: " + "; ".join(problems)
                         + ". Resume with the run's settings or start a new run in another --out folder.")


def prepare_run_dir(tc: TrainConfig, mc, dist: Dist) -> None:
    """Check --out (a run to resume, or no checkpoints to overwrite) and write its config.json (rank 0)."""
    if tc.resume:
        check_resumable(tc.out, tc, mc)
    elif dist.main and ckpt.latest_checkpoint(tc.out):
        raise ValueError(f"{tc.out!r} already holds a run with checkpoints: pass --resume to continue it, or "
                         f"choose another --out")
    if dist.main:
        os.makedirs(tc.out, exist_ok=True)
        atomic_write_json(os.path.join(tc.out, "config.json"), dict(model=mc.to_dict(), train=tc.to_dict()))


def start_state(tc: TrainConfig, mc) -> StartState:
    """The last checkpoint's state with --resume, else weights initialised by the reference (so both backends
    start from the same ones) and a fresh rng seeded by --seed."""
    rng = np.random.default_rng(tc.seed)
    path = ckpt.latest_checkpoint(tc.out) if tc.resume else None
    if not path:
        return StartState(reference.init_params(mc, tc.seed, "float32"), None, 0, rng, None)
    params, _, opt_state, state = ckpt.load_checkpoint(path, mc)
    rng.bit_generator.state = state["rng"]
    return StartState(params, opt_state, state["step"], rng, path)


def save(raw_model, model, mc, optimizer, rng, tc: TrainConfig, step: int, dist: Dist) -> None:
    """Rank 0 writes checkpoint `step` of the run in --out (FSDP gathers the full state on every rank first)."""
    params, optim_sd = full_state(raw_model, model, optimizer, tc, dist)
    if dist.main:
        ckpt.save_checkpoint(tc.out, step, params, mc, optim_sd, dict(rng=rng.bit_generator.state), tc.keep_last)
    dist.barrier()
