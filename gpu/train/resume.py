"""Checkpoints across restarts: the state a run starts from (fresh, its newest intact checkpoint, or --resume-from
STEP), the fall-back past damaged checkpoints, and the checkpoint a run saves (never with non-finite weights)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

import reference

from .. import checkpoint as ckpt
from ..config import TrainConfig
from .device import Dist
from .distributed import full_state


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became NaN or infinite; nothing was saved at that step. The message names
    the newest intact checkpoint. An entry point exits with `exit_code`."""

    exit_code = 1


@dataclass
class StartState:
    """Where the step loop starts: weights (numpy, by reference name), optimizer state (None for a fresh run), the
    first step, the batch rng, the checkpoint it was read from (None for a fresh run), and the folder holding what
    a resume set aside (checkpoints after the one resumed, with the metrics after it), if any."""

    params: dict
    opt_state: dict | None
    step: int
    rng: np.random.Generator
    checkpoint: str | None
    set_aside: str | None = None
    saved: dict | None = None  # the checkpoint's state.json (rng, step, the curriculum's state)


def notice(message: str) -> None:
    """A one-line notice on stderr (on a line of its own)."""
    print(message, file=sys.stderr, flush=True)


def choose_checkpoint(tc: TrainConfig, mc):
    """Rank 0's choice on --resume: (path or None, loaded tuple or None, folder of what was set aside or None).
    --resume-from STEP: that checkpoint (ValueError naming the problem if it is missing or damaged), the newer ones
    moved aside. Otherwise the newest intact one, the damaged newer ones moved aside with a notice each; none at all:
    a notice that the run starts over."""
    found = ckpt.list_checkpoints(tc.out)
    if tc.resume_from:
        path = os.path.join(ckpt.checkpoint_dir(tc.out), f"step-{tc.resume_from:07d}")
        if path not in found:
            steps = [ckpt.step_of(p) for p in found]
            raise ValueError(f"--resume-from={tc.resume_from}: {tc.out!r} has no checkpoint of that step; its "
                             f"checkpoints are at steps {steps or 'none'}")
        check_steps_left(tc, tc.resume_from)
        loaded = ckpt.load_checkpoint(path, mc)
        newer = [p for p in found if ckpt.step_of(p) > tc.resume_from]
        aside = ckpt.set_aside(tc.out, newer, f"after-step-{tc.resume_from:07d}") if newer else None
        if aside:
            notice(f"notice: --resume-from={tc.resume_from}: the {len(newer)} newer checkpoint(s) and their metrics "
                   f"moved to {aside}")
        return path, loaded, aside
    path, loaded, skipped = ckpt.newest_intact(tc.out, mc)
    if skipped and path is None:
        raise ckpt.CheckpointError(f"no intact checkpoint in {tc.out!r}: " + "; ".join(r for _, r in skipped)
                                   + ". Start a new run (--overwrite replaces this one)")
    if path:
        check_steps_left(tc, ckpt.step_of(path))
    aside = ckpt.set_aside(tc.out, [p for p, _ in skipped], "damaged") if skipped else None
    for p, reason in skipped:
        notice(f"notice: skipping a damaged checkpoint ({reason}); moved to {aside}")
    if path is None:
        notice(f"notice: --resume: {tc.out} has no checkpoint yet; starting over from step 0 (metrics.jsonl "
               f"restarts)")
    elif skipped:
        notice(f"notice: resuming from the newest intact checkpoint, {path}")
    return path, loaded, aside


def check_steps_left(tc: TrainConfig, step: int) -> None:
    """ValueError when the checkpoint to resume is already at (or past) --max-steps: nothing would be trained."""
    if step >= tc.max_steps:
        raise ValueError(f"--max-steps={tc.max_steps}: the run's checkpoint is already at step {step}; raise "
                         f"--max-steps to train further")


def start_state(tc: TrainConfig, mc, dist: Dist) -> StartState:
    """With --resume, the chosen checkpoint's state (rank 0 chooses, every rank loads it); else weights initialised
    by the reference (so both backends start from the same ones) and a fresh rng seeded by --seed."""
    rng = np.random.default_rng(tc.seed)
    path, loaded, aside = choose_checkpoint(tc, mc) if tc.resume and dist.main else (None, None, None)
    if dist.enabled and tc.resume:
        step = dist.from_main(ckpt.step_of(path) if path else -1)
        path = os.path.join(ckpt.checkpoint_dir(tc.out), f"step-{step:07d}") if step >= 0 else None
        if path and loaded is None:
            loaded = ckpt.load_checkpoint(path, mc)
    if not path:
        if tc.init_from:  # retrofit / converted / another run's weights instead of a random init
            from ..convert import load_init
            return StartState(load_init(tc.init_from, mc), None, 0, rng, None, aside)
        return StartState(reference.init_params(mc, tc.seed, "float32"), None, 0, rng, None, aside)
    params, _, opt_state, state = loaded
    rng.bit_generator.state = state["rng"]
    return StartState(params, opt_state, state["step"], rng, path, aside, state)


def last_good(run_dir) -> str:
    """The newest intact checkpoint of a run (checksums verified, weights finite), for messages."""
    path, _, _ = ckpt.newest_intact(run_dir, notify=lambda m: None)
    return path or "none"


def diverged_advice(run_dir) -> str:
    return (f"Last good checkpoint: {last_good(run_dir)} (resume it with --resume-from STEP). Try a lower --lr, "
            f"--grad-clip=1, --dtype=float32, or a larger --step-scale-init/--halt-penalty balance.")


def weights_finite(model) -> bool:
    """Whether this process's parameters (its shards under FSDP) are all finite."""
    with torch.no_grad():
        return all(bool(torch.isfinite(getattr(p, "to_local", lambda: p)()).all()) for p in model.parameters())


def save(raw_model, model, mc, optimizer, rng, tc: TrainConfig, step: int, dist: Dist,
         extra: dict | None = None) -> str:
    """Rank 0 writes checkpoint `step` of the run in --out (FSDP gathers the full state on every rank first), with
    `extra` (JSON values) beside the rng in its state.json; returns its folder. TrainingDiverged, on every rank and
    with nothing written, when any weight is not finite."""
    if dist.any(not weights_finite(model)):
        raise TrainingDiverged(f"the weights became non-finite by step {step} (the loss was still finite); not "
                               f"saving them. " + diverged_advice(tc.out))
    params, optim_sd = full_state(raw_model, model, optimizer, tc, dist)
    path = os.path.join(ckpt.checkpoint_dir(tc.out), f"step-{step:07d}")
    if dist.main:
        path = ckpt.save_checkpoint(tc.out, step, params, mc, optim_sd, dict(rng=rng.bit_generator.state, **(extra or {})),
                                    tc.keep_last)
    dist.barrier()
    return path
