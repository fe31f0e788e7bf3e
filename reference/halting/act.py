"""`act`: Adaptive Computation Time (Graves 2016), the halting unit's probabilities summed until they reach 1 - eps."""
from __future__ import annotations

from .base import Halting, HaltingRule, before_min, first_true, margin, steps, xp_of


def act(h, eps, min_loops=1) -> Halting:
    """Adaptive Computation Time (Graves 2016, eqs. 6-12).

    N = min{n >= min_loops : sum_{j<=n} h_j >= 1 - eps}  (N = K if never),
    R = 1 - sum_{j<N} h_j,  weights = (h_1, .., h_{N-1}, R, 0, .., 0),  ponder cost = N + R.
    """
    xp = xp_of(h)
    K = h.shape[-1]
    h = xp.where(before_min(xp, K, min_loops), 0.0, h)
    cum = xp.cumsum(h, axis=-1)  # (..., K)
    n_steps = first_true(xp, cum >= 1.0 - eps)  # (...)
    n = steps(xp, K, h.dtype)
    before = n < n_steps[..., None]
    at = n == n_steps[..., None]
    remainder = 1.0 - xp.sum(xp.where(before, h, 0.0), axis=-1)
    weights = xp.where(before, h, 0.0) + xp.where(at, remainder[..., None], 0.0)
    return Halting(weights=weights, n_steps=n_steps, remainder=remainder,
                   ponder_cost=n_steps.astype(h.dtype) + remainder, kl=xp.zeros_like(remainder),
                   margin=margin(xp, cum, 1.0 - eps, n_steps, min_loops))


def act_backward(h, eps, min_loops, dweights, dponder):
    """d loss / d h given d loss / d weights (..., K) and d loss / d ponder_cost (...). N is held fixed."""
    xp = xp_of(h)
    res = act(h, eps, min_loops)
    K = h.shape[-1]
    n = steps(xp, K, h.dtype)
    before = n < res.n_steps[..., None]
    d_remainder = xp.sum(xp.where(n == res.n_steps[..., None], dweights, 0.0), axis=-1) + dponder
    dh = xp.where(before, dweights - d_remainder[..., None], 0.0)  # weights_n = h_n and R = 1 - sum h_n
    return xp.where(before_min(xp, K, min_loops), 0.0, dh)


class ACT(HaltingRule):
    name = "act"
    uses_unit = True
    threshold_field = "act_eps"

    def start(self, like):
        return like * 0  # cumulative halting sum, (B, T)

    def decide(self, cum, k, sig, delta, cfg):
        cum = cum + sig  # sig = 0 before min_loops, so nobody halts before it
        return cum, cum >= 1.0 - cfg.act_eps

    def resolve(self, signals, deltas, cfg) -> Halting:
        return act(signals, cfg.act_eps, cfg.min_loops)

    def resolve_backward(self, signals, cfg, dweights, dponder, dkl, dexit=None):
        return act_backward(signals, cfg.act_eps, cfg.min_loops, dweights, dponder)

    def loss_weights(self, cfg):
        return {"ponder_cost": cfg.halt_penalty}
