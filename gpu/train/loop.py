"""The step loop: learning-rate schedule, gradient accumulation, clipping, the divergence stop, logging, and the
evaluation and checkpoint cadence."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from reference.optim import lr_at

from ..config import TrainConfig
from ..diagnostics import collapsed
from .build import Trainee
from .curriculum import Curriculum
from .data import sample_global_batch
from .device import Dist, autocast
from .distributed import accumulation_context
from .evaluate import evaluate
from .metrics import Recorder
from .progress import Progress
from .resume import TrainingDiverged, diverged_advice, save  # noqa: F401 (TrainingDiverged: gpu.train's)
from .schedule import Schedule
from .signals import StopSignals


@dataclass
class Session:
    """Everything the step loop reads or updates."""

    tc: TrainConfig
    mc: object                      # reference.config.LoopConfig
    dist: Dist
    device: torch.device
    data: dict                      # gpu.train.data.load_data
    seq_len: int
    trainee: Trainee
    rng: np.random.Generator        # draws the batches (and --random-loops depths); saved in checkpoints
    schedule: Schedule              # per-step warm-ups and loop counts (gpu/train/schedule.py)
    curriculum: Curriculum          # per-step scored difficulty levels (gpu/train/curriculum.py)
    stop: StopSignals = field(default_factory=StopSignals)
    collapse_streak: int = 0
    last_eval: dict | None = None
    clock: dict = field(default_factory=dict)  # t0 and the step the throughput window starts at


def due(done: int, every: int, max_steps: int) -> bool:
    """True at every `every`-th step and at the last one."""
    return done % every == 0 or done == max_steps


def train_loop(s: Session, start_step: int, rec: Recorder) -> dict | None:
    """Steps start_step..max_steps; returns the last evaluation (None if none ran). Raises TrainingDiverged, and
    Stopped after saving when a signal asked the run to stop (gpu.train.signals)."""
    tc = s.tc
    progress = Progress(tc, start_step, s.dist.main)
    s.clock = dict(t0=time.time(), start=start_step)
    s.trainee.model.train()
    s.stop.in_loop = True
    try:
        for step in range(start_step, tc.max_steps):
            lr, loss, depth, extra = optimizer_step(s, step)
            done = step + 1
            progress.update(done, loss, depth, lr, log_train(s, rec, done, lr, loss, depth, extra))
            if due(done, tc.eval_every, tc.max_steps):
                eval_step(s, rec, progress, done)
            saved = save_step(s, done) if due(done, tc.ckpt_every, tc.max_steps) else None
            stop = s.dist.any(s.stop.received is not None)  # every rank takes the same decision, every step
            if stop and done < tc.max_steps:  # (at the last step the run simply ends, report included)
                s.stop.in_loop = False
                raise s.stop.stopped(done, saved or save_step(s, done), s.dist.world)
    finally:
        s.stop.in_loop = False
        progress.close()
    return s.last_eval


def save_step(s: Session, done: int) -> str:
    """Checkpoint `done` (weights checked finite on every rank first); returns its folder."""
    t = s.trainee
    return save(t.raw_model, t.model, s.mc, t.optimizer, s.rng, s.tc, done, s.dist,
                extra=dict(curriculum=s.curriculum.state()))


def optimizer_step(s: Session, step: int) -> tuple[float, float, float, dict]:
    """One optimizer step (0-based `step`): (learning rate, train loss and mean depth, both averaged over the
    micro-batches and processes, and the schedule's values for the train record). Raises TrainingDiverged before
    updating on a non-finite loss."""
    tc, optimizer = s.tc, s.trainee.optimizer
    lr = lr_at(step, tc.lr, tc.warmup, tc.max_steps, tc.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # --random-loops: one depth per optimizer step from the shared rng (the same on every rank; resumes exactly)
    loops = s.schedule.draw_loops(s.rng, step)
    call = dict(loops=loops, overrides=s.schedule.overrides(step), **({"exit_stage2": True} if tc.exit_stage2 else {}))
    loss_sum, depth_sum, answers = accumulate_gradients(s, call, step)
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.trainee.model.parameters(), tc.grad_clip)
    train_loss = s.dist.mean(loss_sum)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"loss became {train_loss} at step {step}; stopping without saving. "
                               + diverged_advice(tc.out))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    curriculum = s.curriculum.after_step(step, *(s.dist.mean(n) for n in answers))  # means: their ratio is the sum's
    return lr, train_loss, s.dist.mean(depth_sum), {**s.schedule.record(step, loops), **curriculum}


def accumulate_gradients(s: Session, call: dict, step: int) -> tuple[float, float, tuple[int, int]]:
    """Backward over grad_accum micro-batches, each loss divided by grad_accum, so the gradient is the one of their
    mean (= of one batch grad_accum times larger); `call`: the schedule's keyword arguments of every model call
    (loops, overrides); the targets the curriculum does not score at `step` are ignored. Returns (mean loss, mean
    depth, (answers right, answers scored) for --curriculum-mastery) of this process."""
    tc, model = s.tc, s.trainee.model
    loss_sum, depth_sum, right, scored = 0.0, 0.0, 0, 0
    for micro in range(tc.grad_accum):
        x, y, topic = sample_global_batch(s.data, "train", tc.batch_size, s.seq_len, s.rng, s.dist,
                                          s.curriculum.ignore_ids(step))
        xt, yt = torch.from_numpy(x).to(s.device), torch.from_numpy(y).to(s.device)
        with accumulation_context(model, tc, s.dist, micro), autocast(tc.dtype, s.device):
            logits, loss, aux = model(xt, yt, **call)
            (loss / tc.grad_accum).backward()
        loss_sum += float(loss.detach()) / tc.grad_accum
        depth_sum += float(aux["n_steps"].float().mean()) / tc.grad_accum
        r, n = s.curriculum.answers_right(logits, x, y, topic, step)
        right, scored = right + r, scored + n
    return loss_sum, depth_sum, (right, scored)


def tokens_per_s(s: Session, done: int) -> float:
    """Training throughput since the loop (re)started, over all processes."""
    tokens_per_step = s.tc.batch_size * s.seq_len * s.tc.grad_accum * s.dist.world
    return (done - s.clock["start"]) * tokens_per_step / max(time.time() - s.clock["t0"], 1e-9)


def log_train(s: Session, rec: Recorder, done: int, lr: float, loss: float, depth: float, extra: dict) -> float:
    """A train record every log_every steps and at the last (rank 0), with `extra` (the step's drawn loop count and
    warmed-up values); returns the throughput for the bar."""
    if s.dist.main and due(done, s.tc.log_every, s.tc.max_steps):
        rec.record("train", done, loss=loss, lr=lr, mean_depth=depth, tokens_per_s=tokens_per_s(s, done), **extra)
    return tokens_per_s(s, done)


def eval_step(s: Session, rec: Recorder, progress: Progress, done: int) -> None:
    """Evaluate (every rank), then on rank 0 record it, print a line and warn when halting has collapsed."""
    ev = s.last_eval = evaluate(s.trainee.model, s.mc, s.tc, s.data, s.device, s.seq_len)
    if not s.dist.main:
        return
    rec.record("eval", done, **ev)
    end = collapsed(ev, s.mc)
    s.collapse_streak = s.collapse_streak + 1 if end else 0
    if s.collapse_streak >= s.tc.collapse_patience:
        progress.write(f"warning: halting has collapsed: >=95% of tokens stop at {end} for {s.collapse_streak} "
                       f"evals in a row. Adjust --halt-penalty (lower if stuck at min) or --halt-bias-init.",
                       warning=True)
    progress.write(f"step {done}: val ce {ev['val_ce']:.4f} | mean depth {ev['mean_depth']:.2f} "
                   f"| depth histogram {ev['depth_hist']}")
