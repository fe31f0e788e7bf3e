"""Torch twin of reference/halting/fixed.py: every token runs all K steps."""
from __future__ import annotations

import torch

from reference.halting.fixed import Fixed as ReferenceFixed

from .base import Halting, TorchRule, one_hot


def fixed(like, K) -> Halting:
    """Every token runs all K steps; the output is the last state. like: any (...,) tensor of the dtype wanted."""
    n_steps = torch.full(like.shape, K, dtype=torch.int64, device=like.device)
    return one_hot(n_steps, K, like, margin_=torch.full(like.shape, torch.inf, dtype=like.dtype, device=like.device))


class Fixed(TorchRule, ReferenceFixed):
    def decide(self, state, k, sig, delta, cfg):
        return state, torch.zeros_like(delta, dtype=torch.bool)

    def resolve(self, signals, deltas, cfg) -> Halting:
        return fixed(signals[..., 0], signals.shape[-1])
