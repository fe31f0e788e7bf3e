"""The whole model: init_params, forward, loss_and_grads (a public contract both backends follow).

tokens (B, T) -> embed (+ learned positions unless RoPE) -> prelude blocks -> loop groups -> coda blocks
       -> final norm -> logits (B, T, V) = x @ W_head^T, W_head = embed.weight when tied.
loss = mean cross-entropy + sum over the halting rule's loss weights of coefficient * mean aux entry:
       act: halt_penalty * mean ponder cost; pondernet: that + pondernet_beta * mean KL(p || prior);
       fixed and converge: no halting term. Means run over tokens and loop groups.
     + the bodies' terms (reference/body/loss_terms.py): moe: moe_balance * mean KL(mean selection || uniform).
Parameters are declared with their init by the components that own them (reference/params.py).
"""
from __future__ import annotations

import numpy as np

from . import ops
from .block import block_param_specs, block_records, norm_param_specs, stack_backward, stack_forward
from .body import loss_terms, memory
from .checks import check_targets, check_tokens
from .config import LoopConfig
from .exits import expected_exit_ce, expected_exit_ce_backward
from .halting import get_rule
from .head import coda_names, head_backward, head_forward
from .loop import loop_backward, loop_forward, loop_param_specs
from .params import ParamSpec, add_grad, normal

GROUP_AUX_KEYS = ("n_steps", "remainder", "ponder_cost", "kl", "weights", "halt_probs", "deltas", "halt_margin",
                  "exit_probs")
AUX_KEYS = GROUP_AUX_KEYS + ("route_margin",)  # route_margin (B, T): the bodies' top-k margin, inf without one


def prelude_names(cfg):
    return [f"prelude.{i}" for i in range(cfg.n_prelude)]


def param_specs(cfg: LoopConfig) -> dict[str, ParamSpec]:
    """Every parameter name -> ParamSpec (shape and init), in the order init_params draws them. Independent of
    max_loops: looping adds depth, not weights."""
    V, D = cfg.vocab_size, cfg.d_model
    specs = {"embed.weight": normal(V, D, std=cfg.init_std)}
    if not cfg.rope:
        specs["pos.weight"] = normal(cfg.block_size, D, std=cfg.init_std)
    for prefix in prelude_names(cfg) + [f"core.{i}" for i in range(cfg.n_layer)] + coda_names(cfg):
        specs.update(block_param_specs(prefix, cfg))
    for g in range(cfg.n_groups):
        specs.update(loop_param_specs(g, cfg))
    specs.update(memory.global_param_specs(cfg))  # the bank every core block shares (memory=global|both)
    specs.update(memory.global_param_specs(cfg))  # the bank all core blocks share (memory=global|both)
    specs.update(norm_param_specs("norm_f", cfg))
    if not cfg.tie_embeddings:
        specs["lm_head.weight"] = normal(V, D, std=cfg.init_std)
    return specs


def param_shapes(cfg: LoopConfig) -> dict[str, tuple]:
    """Every parameter name -> shape."""
    return {name: spec.shape for name, spec in param_specs(cfg).items()}


def init_params(cfg: LoopConfig, seed: int = 0, dtype="float32") -> dict[str, np.ndarray]:
    """Each parameter drawn as its component declares it (param_specs), in order from one generator: weights
    N(0, init_std), residual output projections N(0, init_std / sqrt(2 * effective depth)) (GPT-2), norms 1
    (bias 0), step scale step_scale_init, the halting unit's bias halt_bias_init, the concat injection [I 0] + noise."""
    rng = np.random.default_rng(seed)
    return {name: spec.draw(rng).astype(dtype) for name, spec in param_specs(cfg).items()}


def check_params(params, cfg: LoopConfig) -> None:
    """ValueError listing every missing, unexpected or mis-shaped tensor."""
    expected = param_shapes(cfg)
    problems = [f"missing {n} {s}" for n, s in expected.items() if n not in params]
    problems += [f"unexpected {n}" for n in params if n not in expected]
    problems += [f"{n} has shape {tuple(params[n].shape)}, expected {s}"
                 for n, s in expected.items() if n in params and tuple(params[n].shape) != s]
    if problems:
        raise ValueError("parameters do not match the config: " + "; ".join(problems)
                         + ". Build them with init_params(config) or load the file saved with this config.")


def _rope(cfg, T, xp, dtype):
    return ops.rope_tables(T, cfg.head_dim, cfg.rope_base, xp, dtype) if cfg.rope else None


def embed_and_prelude(params, tokens, cfg: LoopConfig):
    """Checks the inputs, then embeds and runs the prelude: (x (B, T, D), rope tables, caches)."""
    check_params(params, cfg)
    check_tokens(tokens, cfg)
    xp = ops.xp_of(params["embed.weight"])
    T = tokens.shape[1]
    rope = _rope(cfg, T, xp, params["embed.weight"].dtype)
    x, c_emb = ops.embedding_forward(params["embed.weight"], tokens)  # (B, T, D)
    if not cfg.rope:
        x = x + params["pos.weight"][:T]
    x, c_pre = stack_forward(params, prelude_names(cfg), x, cfg, rope)
    return x, rope, (c_emb, c_pre)


def _body_calls(c_pre, c_loops, c_coda):
    """Every call of a body with a loss term, as (prefix, body, Record, mask): mask None in the prelude and coda,
    the running mask of the step in a loop (reference/loop.py's cache: step k's is (mask (B, T, 1), r, c_step),
    c_step[1] the step's block caches; None for a step skipped once every token had halted)."""
    calls = [(*rec, None) for c in c_pre + c_coda for rec in block_records(c)]
    for c_loop in c_loops:
        for step in c_loop[4]:
            if step is not None:
                calls += [(*rec, step[0][..., 0]) for c in step[2][1] for rec in block_records(c)]
    return calls


def forward(params, tokens, cfg: LoopConfig, _keep_cache=False):
    """logits (B, T, V) and aux: per token and loop group, n_steps, remainder, ponder_cost, kl, halt_margin
    (B, T, G); per step, weights, halt_probs, deltas and exit_probs (B, T, G, K); per token, route_margin (B, T):
    the smallest top-k margin of the MoE calls on that token (inf without MoE). The bodies' loss terms are computed
    over the calls of this pass (the coda's on the loop output), reference/body/loss_terms.py."""
    x, rope, (c_emb, c_pre) = embed_and_prelude(params, tokens, cfg)
    xp, T = ops.xp_of(x), tokens.shape[1]
    group_aux, c_loops = [], []
    for g in range(cfg.n_groups):
        x, aux_g, c = loop_forward(params, g, x, cfg, rope)
        group_aux.append(aux_g)
        c_loops.append(c)
    logits, c_head = head_forward(params, x, cfg, rope)
    aux = {key: xp.stack([a[key] for a in group_aux], axis=2) for key in GROUP_AUX_KEYS}
    body_terms, margin, c_terms = loss_terms.forward(_body_calls(c_pre, c_loops, c_head[0]), cfg)
    aux["route_margin"] = xp.full(tokens.shape, xp.inf, dtype=x.dtype) if margin is None else margin
    if _keep_cache:
        return logits, aux, (c_emb, c_pre, c_loops, c_head, rope, T, body_terms, c_terms)
    return logits, aux


def halting_loss_terms(aux, cfg) -> dict[str, float]:
    """The halting rule's terms of the loss: aux key -> coefficient * mean over tokens and groups of aux[key]."""
    return {key: coef * aux[key].mean() for key, coef in get_rule(cfg.halt).loss_weights(cfg).items()}


def loss(params, tokens, targets, cfg: LoopConfig):
    """Forward-only loss (what loss_and_grads differentiates) and its parts."""
    check_targets(targets, tokens, cfg)
    logits, aux, (_, _, c_loops, _, rope, _, body_terms, _) = forward(params, tokens, cfg, _keep_cache=True)
    if get_rule(cfg.halt).expected_exit_loss:  # the exit gate: expected CE over the exit steps (reference/exits.py)
        ce, _ = expected_exit_ce(params, c_loops[0][1], aux["exit_probs"][:, :, 0], targets, cfg, rope)
    else:
        ce, _ = ops.cross_entropy_forward(logits, targets)
    terms = halting_loss_terms(aux, cfg)
    return ce + sum(terms.values()) + sum(body_terms.values()), dict(
        ce=ce, ponder=terms.get("ponder_cost", 0.0), kl=terms.get("kl", 0.0), **body_terms, logits=logits, aux=aux)


def forward_backward(params, tokens, targets, cfg: LoopConfig):
    """(loss, grads, logits, aux): everything one training step needs, from one forward pass."""
    check_targets(targets, tokens, cfg)
    logits, aux, (c_emb, c_pre, c_loops, c_head, rope, T, body_terms, c_terms) = forward(params, tokens, cfg,
                                                                                         _keep_cache=True)
    loss_terms.backward(c_terms)  # each body call's d (body terms) / d (its statistic), read by its own backward
    rule = get_rule(cfg.halt)
    terms = {**halting_loss_terms(aux, cfg), **body_terms}
    xp = ops.xp_of(logits)
    grads = {}
    B = tokens.shape[0]
    n = B * T * cfg.n_groups  # the halting terms are means over tokens and groups
    daux = {key: xp.full((B, T), coef / n, dtype=logits.dtype) for key, coef in rule.loss_weights(cfg).items()}
    dstates = None
    if rule.expected_exit_loss:  # one loop group; the output logits (the inference exit) are not in the loss
        ce, c_exit = expected_exit_ce(params, c_loops[0][1], aux["exit_probs"][:, :, 0], targets, cfg, rope)
        dstates, daux["exit_probs"] = expected_exit_ce_backward(c_exit, grads)
        dx = head_backward(xp.zeros_like(logits), c_head, grads)  # no CE there; a body term may still reach it
    else:
        ce, c_ce = ops.cross_entropy_forward(logits, targets)
        dx = head_backward(ops.cross_entropy_backward(1.0, c_ce), c_head, grads)
    for c in reversed(c_loops):
        dx = loop_backward(dx, daux, c, params, cfg, grads, dstates)
    dx = stack_backward(dx, c_pre, grads)
    if not cfg.rope:
        dpos = xp.zeros_like(params["pos.weight"])
        dpos[:T] = dx.sum(axis=0)
        add_grad(grads, "pos.weight", dpos)
    add_grad(grads, "embed.weight", ops.embedding_backward(dx, c_emb))
    for name, value in params.items():  # a weight no path reached (e.g. an unused step) gets zeros
        if name not in grads:
            grads[name] = xp.zeros_like(value)
    return ce + sum(terms.values()), grads, logits, aux


def loss_and_grads(params, tokens, targets, cfg: LoopConfig):
    """(loss, grads) with grads holding exactly the keys of params."""
    total, grads, _, _ = forward_backward(params, tokens, targets, cfg)
    return total, grads
