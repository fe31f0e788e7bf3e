"""`pondernet`: PonderNet (Banino et al. 2021), a geometric-like halting distribution from the unit's lambda_n,
regularised towards a truncated geometric prior by KL."""
from __future__ import annotations

from .base import Halting, HaltingRule, before_min, first_true, margin, steps, xp_of


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
    lam = xp.where(before_min(xp, K, min_loops), 0.0, lam)
    p, survival = _pondernet_p(xp, lam)
    n_steps = first_true(xp, survival <= eps)
    n = steps(xp, K, lam.dtype)
    remainder = 1.0 - xp.sum(xp.where(n < n_steps[..., None], p, 0.0), axis=-1)
    q = geometric_prior(K, prior, min_loops, xp, lam.dtype)
    logp = xp.log(xp.where(p > 0, p, 1.0))
    kl = xp.sum(xp.where(p > 0, p * (logp - xp.log(xp.where(q > 0, q, 1.0))), 0.0), axis=-1)
    return Halting(weights=p, n_steps=n_steps, remainder=remainder, ponder_cost=xp.sum(p * n, axis=-1),
                   kl=kl, margin=margin(xp, survival, eps, n_steps, min_loops))


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
    q = geometric_prior(lam.shape[-1], prior, min_loops, xp, lam.dtype)
    return exit_distribution_backward(lam, min_loops, q, dweights, dponder, dkl)


def exit_distribution_backward(lam, min_loops, q, dp, dponder, dkl):
    """d loss / d lambda (..., K) of a loss that reads p (the exit distribution of `_pondernet_p`) through dp
    (..., K), its mean step E[n] = sum_n n p_n through dponder (...) and KL(p || q) through dkl (...)."""
    xp = xp_of(lam)
    K = lam.shape[-1]
    lam = xp.where(before_min(xp, K, min_loops), 0.0, lam)
    p, survival = _pondernet_p(xp, lam)
    step_n = steps(xp, K, lam.dtype)
    dkl_dp = xp.where(p > 0, xp.log(xp.where(p > 0, p, 1.0)) - xp.log(xp.where(q > 0, q, 1.0)) + 1.0, 0.0)
    dp = dp + dponder[..., None] * step_n + dkl[..., None] * dkl_dp  # (..., K)
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
    return xp.where(before_min(xp, K, min_loops), 0.0, dlam)


class SurvivalRule(HaltingRule):
    """A rule that halts once the survival S_k = prod_{j<=k} (1 - h_j) of its unit falls to a threshold."""
    uses_unit = True

    def survival_threshold(self, cfg) -> float:
        raise NotImplementedError

    def start(self, like):
        return like * 0 + 1  # survival S_0 = 1, (B, T)

    def decide(self, survival, k, sig, delta, cfg):
        survival = survival * (1.0 - sig)
        return survival, (survival <= self.survival_threshold(cfg)) & (k >= cfg.min_loops)


class PonderNet(SurvivalRule):
    name = "pondernet"
    threshold_field = "act_eps"

    def survival_threshold(self, cfg):
        return cfg.act_eps

    def resolve(self, signals, deltas, cfg) -> Halting:
        return pondernet(signals, cfg.act_eps, cfg.min_loops, cfg.pondernet_prior)

    def resolve_backward(self, signals, cfg, dweights, dponder, dkl, dexit=None):
        return pondernet_backward(signals, cfg.act_eps, cfg.min_loops, cfg.pondernet_prior, dweights, dponder, dkl)

    def loss_weights(self, cfg):
        return {"ponder_cost": cfg.halt_penalty, "kl": cfg.pondernet_beta}
