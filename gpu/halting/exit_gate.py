"""Torch twin of reference/halting/exit_gate.py: Ouro's learned exit gate, exit at CDF >= q (Stage I's expected exit
loss; Stage II, the gate alone, is gpu/exit_stage2.py)."""
from __future__ import annotations

import torch

from reference.halting.exit_gate import ExitGate as ReferenceExitGate

from .base import Halting, TorchRule, before_min, first_true, margin, one_hot, steps
from .pondernet import SurvivalDecision, pondernet_p


def uniform_prior(K, min_loops, like):
    """q_n = 1 / (K - min_loops + 1) from step min_loops on, 0 before (reference.halting.exit_gate.uniform_prior)."""
    n = torch.arange(1, K + 1, device=like.device)
    u = torch.full((K,), 1.0 / (K - min_loops + 1), dtype=like.dtype, device=like.device)  # not via float32
    return torch.where(n >= min_loops, u, torch.zeros_like(u))


def exit_gate(lam, q=0.5, min_loops=1) -> Halting:
    """weights one-hot at N = min{n >= min_loops : S_n <= 1 - q}, exit_probs p, ponder cost E[n], KL(p || uniform)."""
    K = lam.shape[-1]
    lam = torch.where(before_min(K, min_loops, lam.device), 0.0, lam)
    p, survival = pondernet_p(lam)
    n_steps = first_true((survival <= 1.0 - q) & ~before_min(K, min_loops, lam.device))
    n = steps(K, lam)
    u = uniform_prior(K, min_loops, lam)
    logp, logu = torch.log(torch.where(p > 0, p, 1.0)), torch.log(torch.where(u > 0, u, 1.0))
    res = one_hot(n_steps, K, lam, margin(survival, 1.0 - q, n_steps, min_loops))
    res.remainder = 1.0 - torch.where(n < n_steps[..., None], p, 0.0).sum(dim=-1)
    res.ponder_cost, res.kl, res.exit_probs = (p * n).sum(dim=-1), torch.where(p > 0, p * (logp - logu), 0.0).sum(-1), p
    return res


class ExitGate(SurvivalDecision, TorchRule, ReferenceExitGate):
    def resolve(self, signals, deltas, cfg) -> Halting:
        return exit_gate(signals, cfg.exit_threshold, cfg.min_loops)
