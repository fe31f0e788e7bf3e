"""What the training loop varies from step to step: the depth warm-up, the halt-penalty warm-up and the loop count of
random-depth training. The model's parameters never change; the values reach it per call (`model(x, y, loops=r,
overrides={"min_loops": m, "halt_penalty": p})`, tested equal to the reference with `cfg.replace(...)`).

At 0-based step t, with m, p, K the model's min_loops, halt_penalty, max_loops:

    min_loops(t)    = S - floor((S - m) t / W)  for t < W, then m   (S: --min-loops-start, W: --min-loops-warmup)
    halt_penalty(t) = p0 + (p - p0) t / W       for t < W, then p   (p0: --halt-penalty-start, W: --halt-penalty-warmup)
    loops(t), with --random-loops, clipped to [min_loops(t), R]     (R = --random-loops-max, default K):
        uniform  r ~ U{min_loops(t), ..., R}
        poisson  tau ~ N(log rbar - sigma^2 / 2, sigma), sigma = 1/2;  r = 1 + Poisson(e^tau)   (rbar default K / 2)

The poisson draw is Huginn's (Geiping et al. 2025, arXiv 2502.05171; their code's `randomized_iteration_sampler`):
E[e^tau] = rbar, so r averages rbar + 1 before clipping, with a heavy right tail. Huginn leaves it unbounded (mean
32 in training); here R bounds it, because a draw is the most steps any token may take in that step and its cost
(exit_gate computes the head at every step). Without --random-loops every step runs up to K.

The depth warm-up spends W / (S - m) steps at each value S, S - 1, ..., m + 1. The draws come from the run's batch
rng, which checkpoints hold, so a resumed run replays them bit for bit; the warm-ups are functions of the step alone.
Evaluation always runs the model's own config (min_loops m, halt_penalty p, up to K loops).
"""
from __future__ import annotations

import math

import numpy as np

from reference.halting import get_rule

from ..config import TrainConfig

SIGMA = 0.5  # Huginn's sigma of tau


class Schedule:
    """The per-step values of one run (check_schedules has accepted its configs)."""

    def __init__(self, tc: TrainConfig, mc):
        self.tc, self.mc = tc, mc
        self.max_draw = tc.random_loops_max or mc.max_loops
        self.mean = tc.random_loops_mean or mc.max_loops / 2

    def min_loops(self, step: int) -> int:
        """The depth warm-up's min_loops at 0-based `step`."""
        tc, m = self.tc, self.mc.min_loops
        if step >= tc.min_loops_warmup:
            return m
        return tc.min_loops_start - (tc.min_loops_start - m) * step // tc.min_loops_warmup

    def halt_penalty(self, step: int) -> float:
        """The halt-penalty warm-up's penalty at 0-based `step`."""
        tc, p = self.tc, self.mc.halt_penalty
        if step >= tc.halt_penalty_warmup:
            return p
        return tc.halt_penalty_start + (p - tc.halt_penalty_start) * step / tc.halt_penalty_warmup

    def overrides(self, step: int) -> dict | None:
        """The model fields whose value at `step` differs from the model's own (None when none does, so a run past
        its warm-ups calls the model exactly as a run without them)."""
        values = dict(min_loops=self.min_loops(step), halt_penalty=self.halt_penalty(step))
        changed = {k: v for k, v in values.items() if v != getattr(self.mc, k)}
        return changed or None

    def draw_loops(self, rng: np.random.Generator, step: int) -> int | None:
        """The loop count of `step` with --random-loops (from the run's rng: the same on every rank), else None."""
        if not self.tc.random_loops:
            return None
        low = self.min_loops(step)
        if self.tc.random_loops_dist == "uniform":
            return int(rng.integers(low, self.max_draw + 1))
        tau = rng.normal(math.log(self.mean) - SIGMA ** 2 / 2, SIGMA)
        return int(np.clip(1 + rng.poisson(math.exp(tau)), low, self.max_draw))

    def record(self, step: int, loops: int | None) -> dict:
        """What a train record of `step` adds: the drawn loop count and the warmed-up values, where they vary."""
        out = {} if loops is None else dict(loops=loops)
        if self.tc.min_loops_warmup:
            out["min_loops"] = self.min_loops(step)
        if self.tc.halt_penalty_warmup:
            out["halt_penalty"] = self.halt_penalty(step)
        return out


def check_schedules(tc: TrainConfig, mc) -> None:
    """ValueError naming the flag for a warm-up or random-depth setting this model cannot use."""
    rule = get_rule(mc.halt)
    max_draw = tc.random_loops_max or mc.max_loops
    if tc.random_loops and max_draw < mc.min_loops:
        raise ValueError(f"--random-loops-max={tc.random_loops_max} is below min_loops={mc.min_loops}: raise it "
                         f"(0 = max_loops)")
    if tc.min_loops_start:
        top = min(mc.max_loops, max_draw) if tc.random_loops else mc.max_loops
        if not mc.min_loops <= tc.min_loops_start <= top:
            raise ValueError(f"--min-loops-start={tc.min_loops_start}: expected an int in [min_loops={mc.min_loops}, "
                             f"{top}] (max_loops{', --random-loops-max' if tc.random_loops else ''})")
        if not rule.adaptive and not tc.random_loops:
            raise ValueError(f"--min-loops-start: halt={mc.halt!r} runs every token max_loops steps, so min_loops "
                             f"changes nothing; use an adaptive halting rule or --random-loops (whose draws it bounds)")
    if tc.halt_penalty_warmup:
        weights = [rule.loss_weights(mc.replace(halt_penalty=v)) for v in (0.0, 1.0)]
        if weights[0] == weights[1]:
            raise ValueError(f"--halt-penalty-warmup: halt={mc.halt!r} charges no halt penalty (its loss terms: "
                             f"{sorted(weights[0]) or 'none'}); drop the option")
