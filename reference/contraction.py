"""Contraction checks: does the loop refine its state toward a fixed point, or wander?

A loop map Phi is a contraction when ||Phi(a) - Phi(b)|| <= L ||a - b|| with L < 1; then the per-step
change ||s_k - s_{k-1}|| shrinks geometrically and extra loops settle instead of drifting.
  - spectral_norm(W):        ||W||_2 by power iteration on W^T W (a bound on one linear map's gain)
  - lipschitz(...):          local Lipschitz constant of Phi at a state = ||J_Phi||_2, by power iteration on
                             J^T J, with J v from central differences (float64) and J^T u from the backward pass
  - fixed_point_residual:    ||Phi(s_K) - s_K|| / ||s_K||: how far the final state is from a fixed point
  - delta_trajectory:        mean relative change per step over the tokens still running
  - refine / contraction_example: the numpy example of the seed document (tanh of a contraction)
"""
from __future__ import annotations

import numpy as np

from . import ops
from .loop import loop_forward, loop_map, step_backward, step_forward
from .model import embed_and_prelude


def spectral_norm(w, iters: int = 100, seed: int = 0) -> float:
    """Largest singular value of a 2-D matrix by power iteration: v <- W^T W v / ||W^T W v||."""
    xp = ops.xp_of(w)
    v = xp.asarray(np.random.default_rng(seed).standard_normal(w.shape[1]), dtype=w.dtype)
    v = v / xp.linalg.norm(v)
    for _ in range(iters):
        v = w.T @ (w @ v)
        v = v / xp.linalg.norm(v)
    return float(xp.linalg.norm(w @ v))


def spectral_norms(params, cfg) -> dict[str, float]:
    """Spectral norm of every 2-D weight of the looped core (the weights whose gain compounds with depth)."""
    return {name: spectral_norm(w) for name, w in params.items()
            if w.ndim == 2 and (name.startswith("core.") or name.startswith("loop."))}


def loop_inputs(params, tokens, cfg, group: int = 0):
    """The input e of loop group `group` and the rope tables, by running the model up to that group."""
    if not 0 <= group < cfg.n_groups:
        raise ValueError(f"group={group} is out of range: this config has {cfg.n_groups} loop group(s)")
    x, rope, _ = embed_and_prelude(params, tokens, cfg)
    for g in range(group):
        x, _, _ = loop_forward(params, g, x, cfg, rope)
    return x, rope


def final_state(params, e, cfg, rope, group: int = 0, n_loops: int | None = None):
    """s_n after n_loops full (unmasked) loop steps from s_0 = e (default: max_loops)."""
    s = e
    for _ in range(n_loops or cfg.max_loops):
        s = loop_map(params, group, s, e, cfg, rope)
    return s


def lipschitz(params, tokens, cfg, group: int = 0, state=None, iters: int = 100, fd_step: float = 1e-5,
              seed: int = 0) -> float:
    """Local Lipschitz constant ||J_Phi(s)||_2 of the loop map of `group` at `state` (default: the state after
    max_loops steps), over the whole (B, T, D) state: attention couples the tokens, so Phi is one map.
    Power iteration v <- J^T J v; J v by central differences, J^T u by the hand-written backward pass.
    Power iteration converges like (sigma_2 / sigma_1)^(2 iters): raise `iters` when the top singular values
    are close (the estimate approaches the true norm from below)."""
    e, rope = loop_inputs(params, tokens, cfg, group)
    s = final_state(params, e, cfg, rope, group) if state is None else state
    xp = ops.xp_of(s)
    gamma = params[f"loop.{group}.step_scale"]
    v = xp.asarray(np.random.default_rng(seed).standard_normal(s.shape), dtype=s.dtype)
    v = v / xp.linalg.norm(v)
    sigma = 0.0
    for _ in range(iters):
        jv = (loop_map(params, group, s + fd_step * v, e, cfg, rope)
              - loop_map(params, group, s - fd_step * v, e, cfg, rope)) / (2 * fd_step)
        sigma = float(xp.linalg.norm(jv))
        _, cache = step_forward(params, group, s, e, cfg, rope)
        ds, _ = step_backward(gamma * jv, cache, {})  # J^T u with Phi(s) = s + gamma r(s): u + J_r^T (gamma u)
        jtjv = jv + ds
        v = jtjv / xp.linalg.norm(jtjv)
    return sigma


def fixed_point_residual(params, tokens, cfg, group: int = 0, n_loops: int | None = None):
    """Per-token ||Phi(s_n) - s_n|| / ||s_n|| after n_loops full steps: (B, T)."""
    e, rope = loop_inputs(params, tokens, cfg, group)
    s = final_state(params, e, cfg, rope, group, n_loops)
    xp = ops.xp_of(s)
    return xp.linalg.norm(loop_map(params, group, s, e, cfg, rope) - s, axis=-1) / xp.linalg.norm(s, axis=-1)


def running_mean(values, n_steps, axis):
    """Mean of a per-step quantity over the tokens still running at each step, the one home of this statistic.
    values (..., K) at steps 1..K (e.g. aux["deltas"]); n_steps (...) each token's realized depth N; step k
    averages over the tokens with N >= k only (after N a token's entries are no change of a running state).
    axis: the leading axes to average over. nan at a step where no token runs."""
    xp = ops.xp_of(values)
    K = values.shape[-1]
    running = xp.arange(1, K + 1) <= n_steps[..., None]  # (..., K)
    total = xp.sum(xp.where(running, values, 0.0), axis=axis)
    count = xp.sum(running, axis=axis)
    return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)


def delta_trajectory(aux):
    """Mean relative change per step and group over the tokens still running at that step: (G, K).
    Uses forward()'s aux; a step where no token was running is nan."""
    return running_mean(aux["deltas"], aux["n_steps"], axis=(0, 1))


# ----------------------------------------------------------------------------- the seed's numpy example
def contraction_example(d: int = 256, gain: float = 0.7, seed: int = 0):
    """W with spectral norm `gain` < 1 and a bias b: x -> tanh(W x + b) is then a contraction (tanh is 1-Lipschitz)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d))
    W *= gain / np.linalg.norm(W, 2)
    return W, rng.standard_normal(d)


def refine(x0, W, b, tol: float = 1e-4, max_loops: int = 500):
    """Apply the same map x <- tanh(W x + b) until the step ||x_k - x_{k-1}|| < tol (adaptive halting).
    Returns (loops used, final x, list of step sizes)."""
    x, deltas = x0.copy(), []
    for k in range(1, max_loops + 1):
        x_new = np.tanh(W @ x + b)
        deltas.append(float(np.linalg.norm(x_new - x)))
        x = x_new
        if deltas[-1] < tol:
            return k, x, deltas
    return max_loops, x, deltas
