"""Halting diagnostics from a forward pass's aux: depth histogram, shares at the ends, deltas, depth by topic."""
from __future__ import annotations

import numpy as np

from reference.contraction import running_mean
from reference.halting import get_rule


def _numpy(a) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like as a numpy array."""
    return a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def token_depth(aux) -> np.ndarray:
    """Realized depth per token: loop steps averaged over the loop groups. (B, T) float."""
    return _numpy(aux["n_steps"]).mean(axis=-1)


def running_mask(n_steps, K: int) -> np.ndarray:
    """(..., K) bool: True at step k (1-based) while the token still runs, i.e. k <= its realized depth N."""
    return np.arange(1, K + 1) <= _numpy(n_steps)[..., None]


def running_tokens_per_step(n_steps, K: int) -> np.ndarray:
    """(K,) int: how many tokens (and loop groups) still run at each step 1..K; n_steps (...): realized depths."""
    running = running_mask(n_steps, K)
    return running.sum(axis=tuple(range(running.ndim - 1)))


def running_mean_per_step(values, n_steps, K: int | None = None) -> np.ndarray:
    """Mean of a per-step quantity over the tokens still running at each step.

    values (..., K): e.g. aux["deltas"], the relative change of the state at steps 1..K; n_steps (...): each
    token's realized depth N (same leading shape, e.g. (B, T, G)). Step k averages values[..., k-1] over the
    tokens with N >= k, so a token that halted at step N contributes nothing to the steps after N (its entries
    there are whatever the loop wrote, not a change of a running state). Returns (K,) float, nan at a step where
    no token runs."""
    values = _numpy(values)
    K = values.shape[-1] if K is None else K
    if values.shape[-1] != K:
        raise ValueError(f"values have {values.shape[-1]} steps on the last axis, expected K = {K}")
    n_steps = _numpy(n_steps)
    return running_mean(values, n_steps, axis=tuple(range(n_steps.ndim)))


def halting_stats(aux, cfg) -> dict:
    """mean depth, histogram of N over 1..K (all groups), share of tokens at min_loops and at max_loops,
    and the mean relative change per step over the tokens still running (the convergence curve)."""
    n = _numpy(aux["n_steps"]).astype(int)  # (B, T, G)
    K = cfg.max_loops
    delta_curve = running_mean_per_step(aux["deltas"], n, K)
    return dict(mean_depth=float(n.mean()),
                depth_hist=np.bincount(n.ravel(), minlength=K + 1)[1:].tolist(),
                share_min=float((n == cfg.min_loops).mean()), share_max=float((n == K).mean()),
                delta_per_step=[None if np.isnan(d) else float(d) for d in delta_curve])


def depth_by_topic(depth: np.ndarray, topics: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Mean, std and count of the realized depth per topic id."""
    out = {}
    for i, name in enumerate(names):
        d = depth[topics == i]
        if d.size:
            out[name] = dict(mean=float(d.mean()), std=float(d.std()), count=int(d.size))
    return out


def collapsed(stats: dict, cfg) -> str | None:
    """Which end the halting collapsed to (95% of tokens there), or None. A rule that is not adaptive (every token
    runs all steps) never collapses, nor does a run with min_loops == max_loops."""
    if not get_rule(cfg.halt).adaptive or cfg.min_loops == cfg.max_loops:
        return None
    if stats["share_min"] >= 0.95:
        return f"min_loops={cfg.min_loops}"
    if stats["share_max"] >= 0.95:
        return f"max_loops={cfg.max_loops}"
    return None
