"""Halting diagnostics from a forward pass's aux: depth histogram, shares at the ends, deltas, depth by topic."""
from __future__ import annotations

import numpy as np


def token_depth(aux) -> np.ndarray:
    """Realized depth per token: loop steps averaged over the loop groups. (B, T) float."""
    n = aux["n_steps"]
    n = n.detach().float().cpu().numpy() if hasattr(n, "detach") else np.asarray(n, dtype=float)
    return n.mean(axis=-1)


def halting_stats(aux, cfg) -> dict:
    """mean depth, histogram of N over 1..K (all groups), share of tokens at min_loops and at max_loops,
    and the mean relative change per step over the tokens still running (the convergence curve)."""
    to_np = lambda a: a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    n = to_np(aux["n_steps"]).astype(int)  # (B, T, G)
    deltas = to_np(aux["deltas"])  # (B, T, G, K)
    K = cfg.max_loops
    running = np.arange(1, K + 1) <= n[..., None]
    counts = running.sum(axis=(0, 1, 2))
    delta_curve = np.where(counts > 0, (deltas * running).sum(axis=(0, 1, 2)) / np.maximum(counts, 1), np.nan)
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
    """Which end the halting collapsed to (95% of tokens there), or None. Fixed-depth runs never collapse."""
    if cfg.halt == "fixed" or cfg.min_loops == cfg.max_loops:
        return None
    if stats["share_min"] >= 0.95:
        return f"min_loops={cfg.min_loops}"
    if stats["share_max"] >= 0.95:
        return f"max_loops={cfg.max_loops}"
    return None
