"""`converge`: stop once the state stops changing (the fixed-point view of a looped block); no learned unit."""
from __future__ import annotations

from .base import Halting, HaltingRule, before_min, first_true, margin, one_hot, xp_of


def converge(deltas, tol, min_loops=1) -> Halting:
    """Halt at the first step n >= min_loops whose relative change ||s_n - s_{n-1}|| / ||s_{n-1}|| < tol."""
    xp = xp_of(deltas)
    K = deltas.shape[-1]
    n_steps = first_true(xp, (deltas < tol) & ~before_min(xp, K, min_loops))
    return one_hot(xp, n_steps, K, deltas.dtype, margin_=margin(xp, deltas, tol, n_steps, min_loops))


class Converge(HaltingRule):
    name = "converge"
    threshold_field = "converge_tol"

    def decide(self, state, k, sig, delta, cfg):
        return state, (delta < cfg.converge_tol) & (k >= cfg.min_loops)

    def resolve(self, signals, deltas, cfg) -> Halting:
        return converge(deltas, cfg.converge_tol, cfg.min_loops)
