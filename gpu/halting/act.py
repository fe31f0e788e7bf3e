"""Torch twin of reference/halting/act.py: Adaptive Computation Time (Graves 2016)."""
from __future__ import annotations

import torch

from reference.halting.act import ACT as ReferenceACT

from .base import Halting, TorchRule, before_min, first_true, margin, steps


def sequential_cumsum(x):
    """cumsum along the last axis by sequential adds, like np.cumsum and the reference's online sum
    (torch's CPU cumsum accumulates float32 in float64, which could move a decision by one rounding)."""
    out, acc = [], torch.zeros_like(x[..., 0])
    for x_n in x.unbind(dim=-1):
        acc = acc + x_n
        out.append(acc)
    return torch.stack(out, dim=-1)


def act(h, eps, min_loops=1) -> Halting:
    """Adaptive Computation Time (Graves 2016, eqs. 6-12).

    N = min{n >= min_loops : sum_{j<=n} h_j >= 1 - eps} (K if never), R = 1 - sum_{j<N} h_j,
    weights = (h_1, .., h_{N-1}, R, 0, .., 0), ponder cost = N + R.
    """
    K = h.shape[-1]
    h = torch.where(before_min(K, min_loops, h.device), 0.0, h)
    cum = sequential_cumsum(h)  # (..., K)
    n_steps = first_true(cum >= 1.0 - eps)  # (...)
    n = steps(K, h)
    before = n < n_steps[..., None]
    at = n == n_steps[..., None]
    remainder = 1.0 - torch.where(before, h, 0.0).sum(dim=-1)
    weights = torch.where(before, h, 0.0) + torch.where(at, remainder[..., None], 0.0)
    return Halting(weights=weights, n_steps=n_steps, remainder=remainder,
                   ponder_cost=n_steps.to(h.dtype) + remainder, kl=torch.zeros_like(remainder),
                   margin=margin(cum, 1.0 - eps, n_steps, min_loops))


class ACT(TorchRule, ReferenceACT):
    def start(self, like):
        return torch.zeros_like(like)  # cumulative halting sum (B, T)

    def decide(self, cum, k, sig, delta, cfg):
        cum = cum + sig.detach()
        return cum, cum >= 1.0 - cfg.act_eps

    def resolve(self, signals, deltas, cfg) -> Halting:
        return act(signals, cfg.act_eps, cfg.min_loops)
