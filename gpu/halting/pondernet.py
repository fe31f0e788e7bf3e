"""Torch twin of reference/halting/pondernet.py: PonderNet (Banino et al. 2021)."""
from __future__ import annotations

import torch

from reference.halting.pondernet import PonderNet as ReferencePonderNet

from .base import Halting, TorchRule, before_min, first_true, margin, steps


def geometric_prior(K, prior, min_loops=1, like=None):
    """The truncated geometric prior (reference.halting.geometric_prior): the halting distribution of a constant
    lambda_n = lambda_p from step min_loops on, the last step taking the remaining mass:
    q_n = lambda_p (1 - lambda_p)^(n - min_loops) for min_loops <= n < K, q_K = (1 - lambda_p)^(K - min_loops).
    Computed in float64 (as the reference does), then cast to like's dtype. (K,)"""
    device = None if like is None else like.device
    n = torch.arange(1, K + 1, dtype=torch.float64, device=device)
    q = torch.where(n >= min_loops, prior * (1.0 - prior) ** (n - min_loops), 0.0)
    q = torch.cat([q[:-1], torch.full((1,), (1.0 - prior) ** (K - min_loops), dtype=q.dtype, device=device)])
    return q if like is None else q.to(like.dtype)


def pondernet_p(lam):
    """p (..., K) and survival S_n = prod_{j<=n} (1 - lambda_j) (..., K), by the sequential recurrence
    p_n = lambda_n S_{n-1} (the last step takes the rest, p_K = S_{K-1}), S_n = S_{n-1} (1 - lambda_n)."""
    K = lam.shape[-1]
    S = torch.ones_like(lam[..., 0])
    p, surv = [], []
    for n in range(K):
        p.append(lam[..., n] * S if n < K - 1 else S)
        S = S * (1.0 - lam[..., n])
        surv.append(S)
    return torch.stack(p, dim=-1), torch.stack(surv, dim=-1)


def pondernet(lam, eps=0.01, min_loops=1, prior=0.5) -> Halting:
    """PonderNet (Banino et al. 2021, eq. 2). N = first n >= min_loops with survival S_n <= eps;
    ponder cost = E[n] = sum_n n p_n; kl = KL(p || geometric_prior(K, prior, min_loops))."""
    K = lam.shape[-1]
    lam = torch.where(before_min(K, min_loops, lam.device), 0.0, lam)
    p, survival = pondernet_p(lam)
    n_steps = first_true(survival <= eps)
    n = steps(K, lam)
    remainder = 1.0 - torch.where(n < n_steps[..., None], p, 0.0).sum(dim=-1)
    q = geometric_prior(K, prior, min_loops, lam)
    logp = torch.log(torch.where(p > 0, p, 1.0))
    logq = torch.log(torch.where(q > 0, q, 1.0))
    kl = torch.where(p > 0, p * (logp - logq), 0.0).sum(dim=-1)
    return Halting(weights=p, n_steps=n_steps, remainder=remainder, ponder_cost=(p * n).sum(dim=-1),
                   kl=kl, margin=margin(survival, eps, n_steps, min_loops))


class SurvivalDecision:
    """Torch twin of reference.halting.pondernet.SurvivalRule's online decision (on the detached signal)."""

    def start(self, like):
        return torch.ones_like(like)  # survival S_0 = 1, (B, T)

    def decide(self, survival, k, sig, delta, cfg):
        survival = survival * (1.0 - sig.detach())
        return survival, (survival <= self.survival_threshold(cfg)) & (k >= cfg.min_loops)


class PonderNet(SurvivalDecision, TorchRule, ReferencePonderNet):
    def resolve(self, signals, deltas, cfg) -> Halting:
        return pondernet(signals, cfg.act_eps, cfg.min_loops, cfg.pondernet_prior)
