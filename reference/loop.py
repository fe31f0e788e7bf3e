"""The looped core: one group of weight-tied blocks applied up to K times with per-token halting.

For a group with input e (B, T, D) and state s_0 = e, step k = 1..K is
    x_k = inject(s_{k-1}, e)                  none: s;  add: s + e;  concat: W_inj [s; e]   (Huginn)
    r_k = F(x_k) - x_k                        F = the group's blocks applied in order
    s_k = s_{k-1} + m_k * gamma * r_k         gamma: learned per-channel step scale (init near 0)
where m_k = 1 while the token is still running and 0 once it has halted, so a halted token's state
is frozen (its keys and values stay visible to the tokens still thinking). The halting rule
(reference/halting/, chosen by cfg.halt) sees at every step k the signal h_k (its halting unit's
sigmoid(w . norm(s_k) + b) from step min_loops on, 0 otherwise) and the relative change
delta_k = ||s_k - s_{k-1}|| / ||s_{k-1}||, and decides who halts. The group output is
    o = sum_k weights_k s_k                   weights from the rule's resolve.
Halted tokens' keys and values (cfg.halted_kv). A token that halts after step N keeps its state s_N, and every
later step still computes it (masked), so at the first block of the group its keys/values at step k > N are those of
inject(s_N, e): the same at every later step. At a block b > 1 they depend on the token's attention to the tokens
still running, so they keep changing under `live` (the default). Under `frozen`, a token of depth N supplies at step
k and block b > 1 the keys/values of step min(k, N + 1): those of the first step after its exit, then held (its
queries, and so its own outputs, stay as `live` computes them: they are masked anyway). The held keys/values of step
N + 1 receive gradient from every later step that reads them. Huginn holds those of step N itself; N + 1 keeps
one-block groups (where both semantics coincide), the compact executor and the KV cache exactly as they are.
This file holds the attention inputs of those keys/values (the normed block inputs: keys/values are a per-position
function of them, reference.block.block_forward); held from a step that truncated backprop holds constant, they are
constants (no gradient to them, nor to the weights through them), like everything else of that step.
Truncated backprop through depth (cfg.backprop_loops = b > 0, Huginn): the states s_1 .. s_{K-b} are constants
for the gradient (as if detached), so the core's weights learn only from the last b steps; the halting unit
still learns from its signals at every step, and e still gets gradient through the injection of the last b steps.
"""
from __future__ import annotations

from . import ops
from .block import add_grad, kv_input, stack_backward, stack_forward
from .halting import get_rule, relative_change
from .halting.unit import unit_backward, unit_forward
from .params import ParamSpec, constant


def loop_param_specs(g: int, cfg) -> dict[str, ParamSpec]:
    """Group g's own parameters: the step scale gamma (init step_scale_init), the halting rule's parameters, and
    the concat injection W_inj (D, 2D), started at [I 0] + N(0, init_std) so that x_1 ~ s_0."""
    D = cfg.d_model
    specs = {f"loop.{g}.step_scale": constant(D, value=cfg.step_scale_init)}
    specs.update(get_rule(cfg.halt).param_specs(g, cfg))
    if cfg.input_injection == "concat":
        specs[f"loop.{g}.inject.weight"] = ParamSpec((D, 2 * D), "eye_normal", cfg.init_std)
    return specs


HELD_FROM = 1  # the first block (0-based) whose keys/values a halted token holds under "frozen" (at block 0 a no-op)


def _prefixes(g, cfg):
    return [f"core.{i}" for i in cfg.group_blocks(g)]


def _frozen(g, cfg) -> bool:
    return cfg.halted_kv == "frozen" and len(cfg.group_blocks(g)) > HELD_FROM


# ----------------------------------------------------------------------------- one step
def step_forward(params, g, s, e, cfg, rope, kvs=None):
    """r = F(inject(s, e)) - inject(s, e): the un-scaled update of one loop step. (B, T, D) -> (B, T, D).
    kvs: per block, None or (held, held inputs, constant) under halted_kv="frozen" (reference.block.block_forward)."""
    xp = ops.xp_of(s)
    mode = cfg.input_injection
    if mode == "none":
        x, c_inj = s, None
    elif mode == "add":
        x, c_inj = s + e, None
    else:
        x, c_inj = ops.linear_forward(xp.concatenate([s, e], axis=-1), params[f"loop.{g}.inject.weight"])
    y, c_stack = stack_forward(params, _prefixes(g, cfg), x, cfg, rope, kvs)
    return y - x, (c_inj, c_stack, mode, g)


def step_backward(dr, cache, grads, dhelds=None):
    """Returns (ds, de) and adds the blocks' (and injection's) weight gradients to `grads`. For a step run with kvs:
    dhelds (per block, the gradient of its keys/values' inputs from the later steps holding them, or None), and it
    returns (ds, de, the gradient of the held inputs it read, per block)."""
    c_inj, c_stack, mode, g = cache
    dy = stack_backward(dr, c_stack, grads, dhelds)
    dy, dprev = dy if dhelds is not None else (dy, None)
    dx = dy - dr  # r = F(x) - x
    if mode == "none":
        ds, de = dx, None
    elif mode == "add":
        ds, de = dx, dx
    else:
        dcat, dw = ops.linear_backward(dx, c_inj)
        add_grad(grads, f"loop.{g}.inject.weight", dw)
        D = dx.shape[-1]
        ds, de = dcat[..., :D], dcat[..., D:]
    return (ds, de) if dhelds is None else (ds, de, dprev)


def loop_map(params, g, s, e, cfg, rope):
    """Phi(s) = s + gamma * r(s): one full (unmasked) loop step, the map whose contraction we check."""
    r, _ = step_forward(params, g, s, e, cfg, rope)
    return s + params[f"loop.{g}.step_scale"] * r


# ----------------------------------------------------------------------------- the whole loop
def loop_forward(params, g, e, cfg, rope):
    """Run group g on its input e (B, T, D). Returns (o, aux, cache); aux holds (B, T[, K]) arrays."""
    xp = ops.xp_of(e)
    B, T, D = e.shape
    rule = get_rule(cfg.halt)
    gamma = params[f"loop.{g}.step_scale"]
    s = e
    states, step_caches, unit_caches, signals, deltas = [], [], [], [], []
    running = xp.ones((B, T), dtype=bool)
    state = rule.start(xp.zeros((B, T), dtype=e.dtype))
    frozen, n_blocks = _frozen(g, cfg), len(cfg.group_blocks(g))
    exit_step = xp.full((B, T), cfg.max_loops + 1)  # N of the tokens that halted so far (online), K + 1 elsewhere
    held_in = [None] * n_blocks  # per block: the inputs of the keys/values of the last step (B, T, D)
    constant_steps = max(0, cfg.max_loops - cfg.backprop_loops) if cfg.backprop_loops else 0
    for k in range(1, cfg.max_loops + 1):
        if bool(running.any()):  # once every token has halted the remaining steps are no-ops
            mask = running[..., None].astype(e.dtype)  # (B, T, 1)
            held = exit_step < k - 1  # (B, T): step N + 1 done, so from now on they hold its keys/values
            const = held & (exit_step + 1 <= constant_steps)  # held from a step truncated backprop holds constant
            kvs = [None if i < HELD_FROM else (held, held_in[i], const) for i in range(n_blocks)] if frozen else None
            r, c_step = step_forward(params, g, s, e, cfg, rope, kvs)
            if frozen:
                held_in = [kv_input(c) for c in c_step[1]]
            s_new = s + mask * gamma * r
            step_caches.append((mask, r, c_step))
        else:
            s_new = s
            step_caches.append(None)
        delta = relative_change(xp, s_new, s)  # (B, T)
        s = s_new
        states.append(s)
        deltas.append(delta)
        if rule.uses_unit and k >= cfg.min_loops:
            sig, c_unit = unit_forward(params, g, s, cfg)
        else:
            sig, c_unit = xp.zeros((B, T), dtype=e.dtype), None
        signals.append(sig)
        unit_caches.append(c_unit)
        state, halted = rule.decide(state, k, sig, delta, cfg)  # the online decision; resolve recomputes N
        exit_step = xp.where(running & halted, k, exit_step)
        running = running & ~halted
    signals = xp.stack(signals, axis=-1)  # (B, T, K)
    deltas = xp.stack(deltas, axis=-1)  # (B, T, K)
    res = rule.resolve(signals, deltas, cfg)
    S = xp.stack(states, axis=-2)  # (B, T, K, D)
    o = xp.einsum("btk,btkd->btd", res.weights, S)
    aux = dict(weights=res.weights, n_steps=res.n_steps, remainder=res.remainder, ponder_cost=res.ponder_cost,
               kl=res.kl, halt_margin=res.margin, halt_probs=signals, deltas=deltas,
               exit_probs=res.weights if res.exit_probs is None else res.exit_probs)
    return o, aux, (g, S, res.weights, signals, step_caches, unit_caches, gamma, frozen)


def loop_backward(do, dloss_aux, cache, params, cfg, grads, dstates=None):
    """do: (B, T, D) grad of the group output; dloss_aux: aux key -> grad of that aux entry (the halting terms of
    the loss, (B, T); exit_probs (B, T, K) for the exit gate's expected loss); dstates: (B, T, K, D) grads of the
    step states themselves, or None. Adds weight gradients to `grads` and returns de, the gradient of the input."""
    xp = ops.xp_of(do)
    g, S, weights, signals, step_caches, unit_caches, gamma, frozen = cache
    zeros = xp.zeros(do.shape[:2], dtype=do.dtype)
    dweights = xp.einsum("btd,btkd->btk", do, S)
    dsig = get_rule(cfg.halt).resolve_backward(signals, cfg, dweights, dloss_aux.get("ponder_cost", zeros),
                                               dloss_aux.get("kl", zeros), dloss_aux.get("exit_probs"))
    ds = xp.zeros_like(do)
    de = xp.zeros_like(do)
    dgamma = xp.zeros_like(gamma)
    K = cfg.max_loops
    constant_steps = max(0, K - cfg.backprop_loops) if cfg.backprop_loops else 0  # s_1 .. s_this are detached
    dhelds = [None] * len(cfg.group_blocks(g)) if frozen else None  # d (held key/value inputs), from later steps
    for k in reversed(range(K)):
        if k < constant_steps:  # s_{k+1} is a constant: its unit signal still trains the unit, nothing flows on
            if unit_caches[k] is not None and dsig is not None:
                unit_backward(dsig[..., k], unit_caches[k], params, grads)
            continue
        ds = ds + weights[..., k, None] * do
        if dstates is not None:
            ds = ds + dstates[:, :, k]
        if unit_caches[k] is not None and dsig is not None:  # a rule may send no gradient to its unit
            ds = ds + unit_backward(dsig[..., k], unit_caches[k], params, grads)
        if step_caches[k] is not None:  # s_k = s_{k-1} + m gamma r_k; identity path carries ds back
            mask, r, c_step = step_caches[k]
            dmasked = mask * ds
            dgamma = dgamma + xp.sum(dmasked * r, axis=(0, 1))
            ds_step, de_step, *rest = step_backward(dmasked * gamma, c_step, grads, dhelds)
            dhelds = rest[0] if frozen else None
            ds = ds + ds_step
            if de_step is not None:
                de = de + de_step
    add_grad(grads, f"loop.{g}.step_scale", dgamma)
    return de + ds if constant_steps == 0 else de  # s_0 = e (a constant too under truncation)
