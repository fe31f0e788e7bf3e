"""`exit_gate`: the learned exit gate of Ouro / LoopLM (Zhu et al. 2025, arXiv 2510.25741).

The halting unit is the gate lambda_n = sigmoid(w . norm(s_n) + b); it defines an exit distribution
    p_n = lambda_n prod_{j<n} (1 - lambda_j)   (n < K),   p_K = prod_{j<K} (1 - lambda_j)
(PonderNet's, steps before min_loops never exit). Training (Stage I) minimises the expected loss over exits with an
entropy regulariser towards the uniform prior (Ouro: a geometric prior under-trains the deep steps):
    L = sum_n p_n CE(logits of step n) + beta KL(p || uniform over steps min_loops..K)
(KL to the uniform prior is -H(p) + const), beta = LoopConfig.exit_entropy; the logits of step n are the coda and
head applied to s_n. Inference exits at the first step whose cumulative exit probability reaches the threshold q:
    N = min{n >= min_loops : sum_{j<=n} p_j >= q} = min{n : S_n <= 1 - q},   output = s_N,
q = LoopConfig.exit_threshold (q = 1 never exits early: every token runs K steps, Ouro's Stage I).
Stage II of Ouro (the language model frozen, the gate alone trained by a BCE towards the steps that still improve the
loss) is reference/exit_stage2.py, with its torch twin gpu/exit_stage2.py and `gpu.train --exit-stage2`.
"""
from __future__ import annotations

from .base import Halting, before_min, first_true, margin, one_hot, steps, xp_of
from .pondernet import SurvivalRule, _pondernet_p, exit_distribution_backward


def uniform_prior(K, min_loops, xp, dtype):
    """q_n = 1 / (K - min_loops + 1) on the steps a token may exit at, 0 before min_loops. (K,)"""
    n = xp.arange(1, K + 1)
    return xp.where(n >= min_loops, 1.0 / (K - min_loops + 1), 0.0).astype(dtype)


def exit_gate(lam, q=0.5, min_loops=1) -> Halting:
    """Halting of the exit gate from the gate values lam (..., K): weights one-hot at N (the output is s_N),
    exit_probs p, remainder 1 - sum_{n<N} p_n, ponder cost E[n] = sum_n n p_n, kl = KL(p || uniform)."""
    xp = xp_of(lam)
    K = lam.shape[-1]
    lam = xp.where(before_min(xp, K, min_loops), 0.0, lam)
    p, survival = _pondernet_p(xp, lam)
    n_steps = first_true(xp, (survival <= 1.0 - q) & ~before_min(xp, K, min_loops))
    n = steps(xp, K, lam.dtype)
    u = uniform_prior(K, min_loops, xp, lam.dtype)
    logp = xp.log(xp.where(p > 0, p, 1.0))
    kl = xp.sum(xp.where(p > 0, p * (logp - xp.log(xp.where(u > 0, u, 1.0))), 0.0), axis=-1)
    res = one_hot(xp, n_steps, K, lam.dtype, margin(xp, survival, 1.0 - q, n_steps, min_loops))
    res.remainder = 1.0 - xp.sum(xp.where(n < n_steps[..., None], p, 0.0), axis=-1)
    res.ponder_cost, res.kl, res.exit_probs = xp.sum(p * n, axis=-1), kl, p
    return res


class ExitGate(SurvivalRule):
    name = "exit_gate"
    threshold_field = "exit_threshold"
    expected_exit_loss = True

    def survival_threshold(self, cfg):
        return 1.0 - cfg.exit_threshold  # cumulative exit probability 1 - S_k >= q

    def resolve(self, signals, deltas, cfg) -> Halting:
        return exit_gate(signals, cfg.exit_threshold, cfg.min_loops)

    def resolve_backward(self, signals, cfg, dweights, dponder, dkl, dexit=None):
        """The output weights are one-hot at a piecewise-constant N: only exit_probs, E[n] and KL reach lambda."""
        xp, K = xp_of(signals), signals.shape[-1]
        dp = xp.zeros_like(signals) if dexit is None else dexit
        return exit_distribution_backward(signals, cfg.min_loops, uniform_prior(K, cfg.min_loops, xp, signals.dtype),
                                          dp, dponder, dkl)

    def loss_weights(self, cfg):
        return {"kl": cfg.exit_entropy}
