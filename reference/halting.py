"""Halting rules as pure functions of the per-step halting signals (a public contract).

Every rule takes signals of shape (..., K) for steps n = 1..K and returns a `Halting` with
  weights   (..., K)  how much each step state contributes to the output, sum_n weights_n = 1
  n_steps   (...)     N, the realized depth (int)
  remainder (...)     1 - sum_{n<N} weights_n   (Graves' R for ACT)
  ponder_cost (...)   what the halt penalty charges: N + R (ACT), E[n] (PonderNet), N otherwise
  kl        (...)     KL(p || truncated geometric prior) for PonderNet, 0 otherwise
  margin    (...)     distance of the halting statistic to its threshold at the decisions taken;
                      a perturbation smaller than this cannot change N (used to exclude flips in tests)
Steps before `min_loops` never halt: their halting signals are ignored (treated as 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ops import xp_of


@dataclass
class Halting:
    weights: object
    n_steps: object
    remainder: object
    ponder_cost: object
    kl: object
    margin: object


def _steps(xp, K, dtype):
    return xp.arange(1, K + 1, dtype=dtype)  # (K,) = 1..K


def _before_min(xp, K, min_loops):
    return xp.arange(1, K + 1) < min_loops  # (K,) True where no halting is allowed


def _first_true(xp, cond):
    """1-based index of the first True along the last axis; K where none is (the last step always halts)."""
    K = cond.shape[-1]
    cond = cond.copy()
    cond[..., -1] = True
    return xp.argmax(cond, axis=-1) + 1


def _margin(xp, stat, threshold, n_steps, min_loops, allowed_mask=None):
    """min over the decision steps n in [min_loops, min(N, K-1)] of |stat_n - threshold| (inf if none)."""
    K = stat.shape[-1]
    n = xp.arange(1, K + 1)
    decided = (n >= min_loops) & (n < K) & (n <= n_steps[..., None])
    gap = xp.abs(stat - threshold)
    return xp.min(xp.where(decided, gap, xp.inf), axis=-1)


def act(h, eps, min_loops=1) -> Halting:
    """Adaptive Computation Time (Graves 2016, eqs. 6-12).

    N = min{n >= min_loops : sum_{j<=n} h_j >= 1 - eps}  (N = K if never),
    R = 1 - sum_{j<N} h_j,  weights = (h_1, .., h_{N-1}, R, 0, .., 0),  ponder cost = N + R.
    """
    xp = xp_of(h)
    K = h.shape[-1]
    h = xp.where(_before_min(xp, K, min_loops), 0.0, h)
    cum = xp.cumsum(h, axis=-1)  # (..., K)
    n_steps = _first_true(xp, cum >= 1.0 - eps)  # (...)
    steps = _steps(xp, K, h.dtype)
    before = steps < n_steps[..., None]
    at = steps == n_steps[..., None]
    remainder = 1.0 - xp.sum(xp.where(before, h, 0.0), axis=-1)
    weights = xp.where(before, h, 0.0) + xp.where(at, remainder[..., None], 0.0)
    return Halting(weights=weights, n_steps=n_steps, remainder=remainder,
                   ponder_cost=n_steps.astype(h.dtype) + remainder, kl=xp.zeros_like(remainder),
                   margin=_margin(xp, cum, 1.0 - eps, n_steps, min_loops))


def act_backward(h, eps, min_loops, dweights, dponder):
    """d loss / d h given d loss / d weights (..., K) and d loss / d ponder_cost (...). N is held fixed."""
    xp = xp_of(h)
    res = act(h, eps, min_loops)
    K = h.shape[-1]
    steps = _steps(xp, K, h.dtype)
    before = steps < res.n_steps[..., None]
    d_remainder = xp.sum(xp.where(steps == res.n_steps[..., None], dweights, 0.0), axis=-1) + dponder
    dh = xp.where(before, dweights - d_remainder[..., None], 0.0)  # weights_n = h_n and R = 1 - sum h_n
    return xp.where(_before_min(xp, K, min_loops), 0.0, dh)


def geometric_prior(K, prior, min_loops=1, xp=None, dtype=None):
    """The truncated geometric prior: the halting distribution of a constant lambda_n = lambda_p from step
    min_loops on, the last step K taking the remaining mass (the same truncation as `pondernet`):
    q_n = lambda_p (1 - lambda_p)^(n - min_loops) for min_loops <= n < K, q_K = (1 - lambda_p)^(K - min_loops)."""
    import numpy as np
    xp = xp or np
    n = xp.arange(1, K + 1, dtype=xp.float64)
    q = xp.where(n >= min_loops, prior * (1.0 - prior) ** (n - min_loops), 0.0)
    q[-1] = (1.0 - prior) ** (K - min_loops)
    return q if dtype is None else q.astype(dtype)


def pondernet(lam, eps=0.01, min_loops=1, prior=0.5) -> Halting:
    """PonderNet (Banino et al. 2021, eq. 2): `p_n = lambda_n prod_{j < n} (1 - lambda_j)`, the last step taking
    the remaining mass so that `sum_n p_n = 1`. N is the first `n >= min_loops` whose survival
    `S_n = prod_{j <= n} (1 - lambda_j)` falls to eps or below (the same eps as ACT's `act_eps`).
    ponder cost = `E[n] = sum_n n p_n`; kl = `KL(p || geometric_prior(K, prior, min_loops))`.
    """
    xp = xp_of(lam)
    K = lam.shape[-1]
    lam = xp.where(_before_min(xp, K, min_loops), 0.0, lam)
    p, survival = _pondernet_p(xp, lam)
    n_steps = _first_true(xp, survival <= eps)
    steps = _steps(xp, K, lam.dtype)
    remainder = 1.0 - xp.sum(xp.where(steps < n_steps[..., None], p, 0.0), axis=-1)
    q = geometric_prior(K, prior, min_loops, xp, lam.dtype)
    logp = xp.log(xp.where(p > 0, p, 1.0))
    kl = xp.sum(xp.where(p > 0, p * (logp - xp.log(xp.where(q > 0, q, 1.0))), 0.0), axis=-1)
    return Halting(weights=p, n_steps=n_steps, remainder=remainder, ponder_cost=xp.sum(p * steps, axis=-1),
                   kl=kl, margin=_margin(xp, survival, eps, n_steps, min_loops))


def _pondernet_p(xp, lam):
    """p (..., K) and survival S_n = prod_{j<=n} (1 - lambda_j) (..., K), by the sequential recurrence."""
    K = lam.shape[-1]
    S = xp.ones(lam.shape[:-1], dtype=lam.dtype)
    p, surv = [], []
    for n in range(K):
        p.append(lam[..., n] * S if n < K - 1 else S)
        S = S * (1.0 - lam[..., n])
        surv.append(S)
    return xp.stack(p, axis=-1), xp.stack(surv, axis=-1)


def pondernet_backward(lam, eps, min_loops, prior, dweights, dponder, dkl):
    """d loss / d lambda by reverse accumulation through p_n = lambda_n S_{n-1}, S_n = S_{n-1} (1 - lambda_n)."""
    xp = xp_of(lam)
    K = lam.shape[-1]
    lam = xp.where(_before_min(xp, K, min_loops), 0.0, lam)
    p, survival = _pondernet_p(xp, lam)
    q = geometric_prior(K, prior, min_loops, xp, lam.dtype)
    steps = _steps(xp, K, lam.dtype)
    dkl_dp = xp.where(p > 0, xp.log(xp.where(p > 0, p, 1.0)) - xp.log(xp.where(q > 0, q, 1.0)) + 1.0, 0.0)
    dp = dweights + dponder[..., None] * steps + dkl[..., None] * dkl_dp  # (..., K)
    dlam = [None] * K
    dS = xp.zeros(lam.shape[:-1], dtype=lam.dtype)  # d loss / d S_n, flowing backwards
    for n in reversed(range(K)):
        S_prev = survival[..., n - 1] if n > 0 else xp.ones_like(dS)
        if n == K - 1:
            dS_prev = dp[..., n]  # p_K = S_{K-1}; S_K itself is unused
            dlam[n] = xp.zeros_like(dS)
        else:
            dS_prev = dp[..., n] * lam[..., n] + dS * (1.0 - lam[..., n])
            dlam[n] = dp[..., n] * S_prev - dS * S_prev
        dS = dS_prev
    dlam = xp.stack(dlam, axis=-1)
    return xp.where(_before_min(xp, K, min_loops), 0.0, dlam)


def converge(deltas, tol, min_loops=1) -> Halting:
    """Halt at the first step n >= min_loops whose relative change ||s_n - s_{n-1}|| / ||s_{n-1}|| < tol."""
    xp = xp_of(deltas)
    K = deltas.shape[-1]
    n_steps = _first_true(xp, (deltas < tol) & ~_before_min(xp, K, min_loops))
    return _one_hot(xp, n_steps, K, deltas.dtype, margin=_margin(xp, deltas, tol, n_steps, min_loops))


def fixed(shape, K, xp=None, dtype=None) -> Halting:
    """Every token runs all K steps; the output is the last state."""
    import numpy as np
    xp = xp or np
    dtype = dtype or xp.float64
    n_steps = xp.full(shape, K, dtype=xp.int64)
    return _one_hot(xp, n_steps, K, dtype, margin=xp.full(shape, math.inf, dtype=dtype))


def _one_hot(xp, n_steps, K, dtype, margin):
    weights = (_steps(xp, K, dtype) == n_steps[..., None]).astype(dtype)
    ones = xp.ones(n_steps.shape, dtype=dtype)
    return Halting(weights=weights, n_steps=n_steps, remainder=ones, ponder_cost=n_steps.astype(dtype),
                   kl=xp.zeros_like(ones), margin=margin)
