"""Torch twins of reference/halting.py: the halting rules as pure functions of the per-step signals (..., K).

Same op order as the reference (cumulative sums and survival products are sequential, step by step), so a
float64 run agrees with numpy to rounding. Autograd supplies the backward that reference/halting.py writes by
hand: N is a threshold decision (no gradient), the weights are differentiable through the signals.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Halting:
    weights: torch.Tensor      # (..., K)  sum_n weights_n = 1
    n_steps: torch.Tensor      # (...)     N, int64
    remainder: torch.Tensor    # (...)     1 - sum_{n<N} weights_n
    ponder_cost: torch.Tensor  # (...)     N + R (ACT), E[n] (PonderNet), N otherwise
    kl: torch.Tensor           # (...)     KL(p || prior) for PonderNet, 0 otherwise
    margin: torch.Tensor       # (...)     distance of the halting statistic to its threshold at the decisions taken


def _steps(K, like):
    return torch.arange(1, K + 1, dtype=like.dtype, device=like.device)  # (K,) = 1..K


def _before_min(K, min_loops, device):
    return torch.arange(1, K + 1, device=device) < min_loops  # (K,) True where no halting is allowed


def _first_true(cond):
    """1-based index of the first True along the last axis; K where none is (the last step always halts)."""
    cond = torch.cat([cond[..., :-1], torch.ones_like(cond[..., -1:])], dim=-1)
    return cond.to(torch.uint8).argmax(dim=-1) + 1  # argmax returns the first maximum


def _margin(stat, threshold, n_steps, min_loops):
    """min over the decision steps n in [min_loops, min(N, K-1)] of |stat_n - threshold| (inf if none)."""
    K = stat.shape[-1]
    n = torch.arange(1, K + 1, device=stat.device)
    decided = (n >= min_loops) & (n < K) & (n <= n_steps[..., None])
    return torch.where(decided, (stat.detach() - threshold).abs(), torch.inf).amin(dim=-1)


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
    h = torch.where(_before_min(K, min_loops, h.device), 0.0, h)
    cum = sequential_cumsum(h)  # (..., K)
    n_steps = _first_true(cum >= 1.0 - eps)  # (...)
    steps = _steps(K, h)
    before = steps < n_steps[..., None]
    at = steps == n_steps[..., None]
    remainder = 1.0 - torch.where(before, h, 0.0).sum(dim=-1)
    weights = torch.where(before, h, 0.0) + torch.where(at, remainder[..., None], 0.0)
    return Halting(weights=weights, n_steps=n_steps, remainder=remainder,
                   ponder_cost=n_steps.to(h.dtype) + remainder, kl=torch.zeros_like(remainder),
                   margin=_margin(cum, 1.0 - eps, n_steps, min_loops))


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
    lam = torch.where(_before_min(K, min_loops, lam.device), 0.0, lam)
    p, survival = pondernet_p(lam)
    n_steps = _first_true(survival <= eps)
    steps = _steps(K, lam)
    remainder = 1.0 - torch.where(steps < n_steps[..., None], p, 0.0).sum(dim=-1)
    q = geometric_prior(K, prior, min_loops, lam)
    logp = torch.log(torch.where(p > 0, p, 1.0))
    logq = torch.log(torch.where(q > 0, q, 1.0))
    kl = torch.where(p > 0, p * (logp - logq), 0.0).sum(dim=-1)
    return Halting(weights=p, n_steps=n_steps, remainder=remainder, ponder_cost=(p * steps).sum(dim=-1),
                   kl=kl, margin=_margin(survival, eps, n_steps, min_loops))


def converge(deltas, tol, min_loops=1) -> Halting:
    """Halt at the first step n >= min_loops whose relative change ||s_n - s_{n-1}|| / ||s_{n-1}|| < tol."""
    K = deltas.shape[-1]
    n_steps = _first_true((deltas < tol) & ~_before_min(K, min_loops, deltas.device))
    return _one_hot(n_steps, K, deltas, margin=_margin(deltas, tol, n_steps, min_loops))


def fixed(like, K) -> Halting:
    """Every token runs all K steps; the output is the last state. like: any (...,) tensor of the dtype wanted."""
    n_steps = torch.full(like.shape, K, dtype=torch.int64, device=like.device)
    return _one_hot(n_steps, K, like, margin=torch.full(like.shape, torch.inf, dtype=like.dtype, device=like.device))


def _one_hot(n_steps, K, like, margin):
    weights = (_steps(K, like) == n_steps[..., None]).to(like.dtype)
    ones = torch.ones(n_steps.shape, dtype=like.dtype, device=like.device)
    return Halting(weights=weights, n_steps=n_steps, remainder=ones, ponder_cost=n_steps.to(like.dtype),
                   kl=torch.zeros_like(ones), margin=margin)
