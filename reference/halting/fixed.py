"""`fixed`: every token runs all K steps and the output is the last state (a plain looped transformer)."""
from __future__ import annotations

import math

from .base import Halting, HaltingRule, one_hot, xp_of


def fixed(shape, K, xp=None, dtype=None) -> Halting:
    """N = K for every token; weights = one-hot at step K."""
    import numpy as np
    xp = xp or np
    dtype = dtype or xp.float64
    n_steps = xp.full(shape, K, dtype=xp.int64)
    return one_hot(xp, n_steps, K, dtype, margin_=xp.full(shape, math.inf, dtype=dtype))


class Fixed(HaltingRule):
    name = "fixed"
    adaptive = False

    def decide(self, state, k, sig, delta, cfg):
        return state, xp_of(delta).zeros(delta.shape, dtype=bool)  # nobody halts before the last step

    def resolve(self, signals, deltas, cfg) -> Halting:
        return fixed(signals.shape[:-1], signals.shape[-1], xp_of(signals), signals.dtype)
