"""The looped core: one group of weight-tied blocks applied up to K times with per-token halting.

For a group with input e (B, T, D) and state s_0 = e, step k = 1..K is
    x_k = inject(s_{k-1}, e)                  none: s;  add: s + e;  concat: W_inj [s; e]   (Huginn)
    r_k = F(x_k) - x_k                        F = the group's blocks applied in order
    s_k = s_{k-1} + m_k * gamma * r_k         gamma: learned per-channel step scale (init near 0)
where m_k = 1 while the token is still running and 0 once it has halted, so a halted token's state
is frozen (its keys and values stay visible to the tokens still thinking). The halting signal at
step k >= min_loops is h_k = sigmoid(w . norm(s_k) + b) (ACT's halting unit, PonderNet's lambda_k),
or the relative change delta_k = ||s_k - s_{k-1}|| / ||s_{k-1}|| for `converge`. The group output is
    o = sum_k weights_k s_k                   weights from `reference.halting`.
"""
from __future__ import annotations

from . import halting, ops
from .block import add_grad, stack_backward, stack_forward

_NORM_FLOOR = 1e-12  # keeps delta finite for an all-zero state


def has_halting_unit(cfg) -> bool:
    return cfg.halt in ("act", "pondernet")


def loop_param_shapes(g: int, cfg) -> dict[str, tuple]:
    D = cfg.d_model
    shapes = {f"loop.{g}.step_scale": (D,)}
    if has_halting_unit(cfg):
        shapes[f"loop.{g}.halt.weight"] = (D,)
        shapes[f"loop.{g}.halt.bias"] = (1,)
    if cfg.input_injection == "concat":
        shapes[f"loop.{g}.inject.weight"] = (D, 2 * D)
    return shapes


def _prefixes(g, cfg):
    return [f"core.{i}" for i in cfg.group_blocks(g)]


# ----------------------------------------------------------------------------- one step
def step_forward(params, g, s, e, cfg, rope):
    """r = F(inject(s, e)) - inject(s, e): the un-scaled update of one loop step. (B, T, D) -> (B, T, D)."""
    xp = ops.xp_of(s)
    mode = cfg.input_injection
    if mode == "none":
        x, c_inj = s, None
    elif mode == "add":
        x, c_inj = s + e, None
    else:
        x, c_inj = ops.linear_forward(xp.concatenate([s, e], axis=-1), params[f"loop.{g}.inject.weight"])
    y, c_stack = stack_forward(params, _prefixes(g, cfg), x, cfg, rope)
    return y - x, (c_inj, c_stack, mode, g)


def step_backward(dr, cache, grads):
    """Returns (ds, de) and adds the blocks' (and injection's) weight gradients to `grads`."""
    c_inj, c_stack, mode, g = cache
    dx = stack_backward(dr, c_stack, grads) - dr  # r = F(x) - x
    if mode == "none":
        return dx, None
    if mode == "add":
        return dx, dx
    dcat, dw = ops.linear_backward(dx, c_inj)
    add_grad(grads, f"loop.{g}.inject.weight", dw)
    D = dx.shape[-1]
    return dcat[..., :D], dcat[..., D:]


def loop_map(params, g, s, e, cfg, rope):
    """Phi(s) = s + gamma * r(s): one full (unmasked) loop step, the map whose contraction we check."""
    r, _ = step_forward(params, g, s, e, cfg, rope)
    return s + params[f"loop.{g}.step_scale"] * r


# ----------------------------------------------------------------------------- halting unit
def halt_unit_forward(params, g, s, cfg):
    """h = sigmoid(w . norm(s) + b): (B, T, D) -> (B, T)."""
    xp = ops.xp_of(s)
    n, c_norm = ops.norm_forward(s, kind=cfg.norm)
    z = n @ params[f"loop.{g}.halt.weight"] + params[f"loop.{g}.halt.bias"][0]
    h = 1.0 / (1.0 + xp.exp(-z))
    return h, (n, c_norm, h)


def halt_unit_backward(dh, cache, params, g, grads):
    xp = ops.xp_of(dh)
    n, c_norm, h = cache
    dz = dh * h * (1.0 - h)  # (B, T)
    add_grad(grads, f"loop.{g}.halt.weight", xp.einsum("bt,btd->d", dz, n))
    add_grad(grads, f"loop.{g}.halt.bias", xp.sum(dz).reshape(1))
    ds, _, _ = ops.norm_backward(dz[..., None] * params[f"loop.{g}.halt.weight"], c_norm)
    return ds


# ----------------------------------------------------------------------------- the whole loop
def loop_forward(params, g, e, cfg, rope):
    """Run group g on its input e (B, T, D). Returns (o, aux, cache); aux holds (B, T[, K]) arrays."""
    xp = ops.xp_of(e)
    B, T, D = e.shape
    K, mode = cfg.max_loops, cfg.halt
    gamma = params[f"loop.{g}.step_scale"]
    s = e
    states, step_caches, halt_caches, signals, deltas = [], [], [], [], []
    running = xp.ones((B, T), dtype=bool)
    cum = xp.zeros((B, T), dtype=e.dtype)        # ACT: sum of h so far
    survival = xp.ones((B, T), dtype=e.dtype)    # PonderNet: prod of (1 - lambda) so far
    for k in range(1, K + 1):
        if bool(running.any()):  # once every token has halted the remaining steps are no-ops
            mask = running[..., None].astype(e.dtype)  # (B, T, 1)
            r, c_step = step_forward(params, g, s, e, cfg, rope)
            s_new = s + mask * gamma * r
            step_caches.append((mask, r, c_step))
        else:
            s_new = s
            step_caches.append(None)
        delta = xp.sqrt(xp.sum((s_new - s) ** 2, axis=-1)) / (xp.sqrt(xp.sum(s * s, axis=-1)) + _NORM_FLOOR)
        s = s_new
        states.append(s)
        deltas.append(delta)
        if has_halting_unit(cfg) and k >= cfg.min_loops:
            sig, c_halt = halt_unit_forward(params, g, s, cfg)
        else:
            sig, c_halt = xp.zeros((B, T), dtype=e.dtype), None
        signals.append(sig)
        halt_caches.append(c_halt)
        # the online halting decision; `reference.halting` recomputes the same N from the signals
        if mode == "act":
            cum = cum + sig
            halted = cum >= 1.0 - cfg.act_eps
        elif mode == "pondernet":
            survival = survival * (1.0 - sig)
            halted = (survival <= cfg.act_eps) & (k >= cfg.min_loops)
        elif mode == "converge":
            halted = (delta < cfg.converge_tol) & (k >= cfg.min_loops)
        else:
            halted = xp.zeros((B, T), dtype=bool)
        running = running & ~halted
    signals = xp.stack(signals, axis=-1)  # (B, T, K)
    deltas = xp.stack(deltas, axis=-1)  # (B, T, K)
    res = _halting(signals, deltas, cfg, xp)
    S = xp.stack(states, axis=-2)  # (B, T, K, D)
    o = xp.einsum("btk,btkd->btd", res.weights, S)
    aux = dict(weights=res.weights, n_steps=res.n_steps, remainder=res.remainder, ponder_cost=res.ponder_cost,
               kl=res.kl, halt_margin=res.margin, halt_probs=signals, deltas=deltas)
    return o, aux, (g, S, res.weights, signals, step_caches, halt_caches, gamma)


def _halting(signals, deltas, cfg, xp):
    if cfg.halt == "act":
        return halting.act(signals, cfg.act_eps, cfg.min_loops)
    if cfg.halt == "pondernet":
        return halting.pondernet(signals, cfg.act_eps, cfg.min_loops, cfg.pondernet_prior)
    if cfg.halt == "converge":
        return halting.converge(deltas, cfg.converge_tol, cfg.min_loops)
    return halting.fixed(signals.shape[:-1], cfg.max_loops, xp, signals.dtype)


def loop_backward(do, dponder, dkl, cache, params, cfg, grads):
    """do: (B, T, D) grad of the group output; dponder, dkl: (B, T) grads of the ponder cost and KL.
    Adds weight gradients to `grads` and returns de, the gradient of the group input."""
    xp = ops.xp_of(do)
    g, S, weights, signals, step_caches, halt_caches, gamma = cache
    K = cfg.max_loops
    dweights = xp.einsum("btd,btkd->btk", do, S)
    if cfg.halt == "act":
        dsig = halting.act_backward(signals, cfg.act_eps, cfg.min_loops, dweights, dponder)
    elif cfg.halt == "pondernet":
        dsig = halting.pondernet_backward(signals, cfg.act_eps, cfg.min_loops, cfg.pondernet_prior,
                                          dweights, dponder, dkl)
    else:
        dsig = None  # one-hot weights at a piecewise-constant N: no gradient to a halting signal
    ds = xp.zeros_like(do)
    de = xp.zeros_like(do)
    dgamma = xp.zeros_like(gamma)
    for k in reversed(range(K)):
        ds = ds + weights[..., k, None] * do
        if halt_caches[k] is not None:
            ds = ds + halt_unit_backward(dsig[..., k], halt_caches[k], params, g, grads)
        if step_caches[k] is not None:  # s_k = s_{k-1} + m gamma r_k; identity path carries ds back
            mask, r, c_step = step_caches[k]
            dmasked = mask * ds
            dgamma = dgamma + xp.sum(dmasked * r, axis=(0, 1))
            ds_step, de_step = step_backward(dmasked * gamma, c_step, grads)
            ds = ds + ds_step
            if de_step is not None:
                de = de + de_step
    add_grad(grads, f"loop.{g}.step_scale", dgamma)
    return de + ds  # s_0 = e
