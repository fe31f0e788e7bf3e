"""Torch twin of reference/halting/converge.py: stop once the state stops changing."""
from __future__ import annotations

from reference.halting.converge import Converge as ReferenceConverge

from .base import Halting, TorchRule, before_min, first_true, margin, one_hot


def converge(deltas, tol, min_loops=1) -> Halting:
    """Halt at the first step n >= min_loops whose relative change ||s_n - s_{n-1}|| / ||s_{n-1}|| < tol."""
    K = deltas.shape[-1]
    n_steps = first_true((deltas < tol) & ~before_min(K, min_loops, deltas.device))
    return one_hot(n_steps, K, deltas, margin_=margin(deltas, tol, n_steps, min_loops))


class Converge(TorchRule, ReferenceConverge):
    def resolve(self, signals, deltas, cfg) -> Halting:
        return converge(deltas, cfg.converge_tol, cfg.min_loops)
