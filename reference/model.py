"""The whole model: init_params, forward, loss_and_grads (a public contract both backends follow).

tokens (B, T) -> embed (+ learned positions unless RoPE) -> prelude blocks -> loop groups -> coda blocks
       -> final norm -> logits (B, T, V) = x @ W_head^T, W_head = embed.weight when tied.
loss = mean cross-entropy + sum over the halting rule's loss weights of coefficient * mean aux entry:
       act: halt_penalty * mean ponder cost; pondernet: that + pondernet_beta * mean KL(p || prior);
       fixed and converge: no halting term. Means run over tokens and loop groups.
Parameters are declared with their init by the components that own them (reference/params.py).
"""
from __future__ import annotations

import numpy as np

from . import ops
from .block import add_norm_grads, block_param_specs, norm_param_specs, norm_params, stack_backward, stack_forward
from .checks import check_targets, check_tokens
from .config import LoopConfig
from .halting import get_rule
from .loop import loop_backward, loop_forward, loop_param_specs
from .params import ParamSpec, add_grad, normal

AUX_KEYS = ("n_steps", "remainder", "ponder_cost", "kl", "weights", "halt_probs", "deltas", "halt_margin")


def prelude_names(cfg):
    return [f"prelude.{i}" for i in range(cfg.n_prelude)]


def coda_names(cfg):
    return [f"coda.{i}" for i in range(cfg.n_coda)]


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


def _head_weight(params, cfg):
    return params["embed.weight"] if cfg.tie_embeddings else params["lm_head.weight"]


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


def forward(params, tokens, cfg: LoopConfig, _keep_cache=False):
    """logits (B, T, V) and aux: per token and loop group, n_steps, remainder, ponder_cost, kl, halt_margin
    (B, T, G); per step, weights, halt_probs and deltas (B, T, G, K)."""
    x, rope, (c_emb, c_pre) = embed_and_prelude(params, tokens, cfg)
    xp, T = ops.xp_of(x), tokens.shape[1]
    group_aux, c_loops = [], []
    for g in range(cfg.n_groups):
        x, aux_g, c = loop_forward(params, g, x, cfg, rope)
        group_aux.append(aux_g)
        c_loops.append(c)
    x, c_coda = stack_forward(params, coda_names(cfg), x, cfg, rope)
    xn, c_norm = ops.norm_forward(x, *norm_params(params, "norm_f"), kind=cfg.norm)
    logits, c_head = ops.linear_forward(xn, _head_weight(params, cfg))
    aux = {key: xp.stack([a[key] for a in group_aux], axis=2) for key in AUX_KEYS}
    if _keep_cache:
        return logits, aux, (c_emb, c_pre, c_loops, c_coda, c_norm, c_head, T)
    return logits, aux


def halting_loss_terms(aux, cfg) -> dict[str, float]:
    """The halting rule's terms of the loss: aux key -> coefficient * mean over tokens and groups of aux[key]."""
    return {key: coef * aux[key].mean() for key, coef in get_rule(cfg.halt).loss_weights(cfg).items()}


def loss(params, tokens, targets, cfg: LoopConfig):
    """Forward-only loss (what loss_and_grads differentiates) and its parts."""
    check_targets(targets, tokens, cfg)
    logits, aux = forward(params, tokens, cfg)
    ce, _ = ops.cross_entropy_forward(logits, targets)
    terms = halting_loss_terms(aux, cfg)
    return ce + sum(terms.values()), dict(ce=ce, ponder=terms.get("ponder_cost", 0.0), kl=terms.get("kl", 0.0),
                                          logits=logits, aux=aux)


def forward_backward(params, tokens, targets, cfg: LoopConfig):
    """(loss, grads, logits, aux): everything one training step needs, from one forward pass."""
    check_targets(targets, tokens, cfg)
    logits, aux, (c_emb, c_pre, c_loops, c_coda, c_norm, c_head, T) = forward(params, tokens, cfg, _keep_cache=True)
    ce, c_ce = ops.cross_entropy_forward(logits, targets)
    terms = halting_loss_terms(aux, cfg)
    xp = ops.xp_of(logits)
    grads = {}
    dlogits = ops.cross_entropy_backward(1.0, c_ce)
    dxn, dw_head = ops.linear_backward(dlogits, c_head)
    add_grad(grads, "embed.weight" if cfg.tie_embeddings else "lm_head.weight", dw_head)
    dx, dw, db = ops.norm_backward(dxn, c_norm)
    add_norm_grads(grads, "norm_f", dw, db)
    dx = stack_backward(dx, c_coda, grads)
    B = tokens.shape[0]
    n = B * T * cfg.n_groups  # the halting terms are means over tokens and groups
    daux = {key: xp.full((B, T), coef / n, dtype=logits.dtype)
            for key, coef in get_rule(cfg.halt).loss_weights(cfg).items()}
    for c in reversed(c_loops):
        dx = loop_backward(dx, daux, c, params, cfg, grads)
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
