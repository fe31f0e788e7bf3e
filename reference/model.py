"""The whole model: init_params, forward, loss_and_grads (a public contract both backends follow).

tokens (B, T) -> embed (+ learned positions unless RoPE) -> prelude blocks -> loop groups -> coda blocks
       -> final norm -> logits (B, T, V) = x @ W_head^T, W_head = embed.weight when tied.
loss = mean cross-entropy + halt_penalty * mean ponder cost   (act, pondernet)
                          + pondernet_beta * mean KL(p || prior)   (pondernet)
Means run over tokens and loop groups; `fixed` and `converge` have no halting term.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .block import add_grad, add_norm_grads, block_param_shapes, norm_params, stack_backward, stack_forward
from .config import LoopConfig
from .loop import has_halting_unit, loop_backward, loop_forward, loop_param_shapes

AUX_KEYS = ("n_steps", "remainder", "ponder_cost", "kl", "weights", "halt_probs", "deltas", "halt_margin")


def prelude_names(cfg):
    return [f"prelude.{i}" for i in range(cfg.n_prelude)]


def coda_names(cfg):
    return [f"coda.{i}" for i in range(cfg.n_coda)]


def param_shapes(cfg: LoopConfig) -> dict[str, tuple]:
    """Every parameter name -> shape. Independent of max_loops: looping adds depth, not weights."""
    V, D = cfg.vocab_size, cfg.d_model
    shapes = {"embed.weight": (V, D)}
    if not cfg.rope:
        shapes["pos.weight"] = (cfg.block_size, D)
    for prefix in prelude_names(cfg) + [f"core.{i}" for i in range(cfg.n_layer)] + coda_names(cfg):
        shapes.update(block_param_shapes(prefix, cfg))
    for g in range(cfg.n_groups):
        shapes.update(loop_param_shapes(g, cfg))
    shapes["norm_f.weight"] = (D,)
    if cfg.norm == "layernorm":
        shapes["norm_f.bias"] = (D,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def init_params(cfg: LoopConfig, seed: int = 0, dtype="float32") -> dict[str, np.ndarray]:
    """Weights ~ N(0, init_std); residual output projections scaled by 1/sqrt(2 * effective depth) (GPT-2);
    norms 1 (bias 0); step scale = step_scale_init; halting bias = halt_bias_init, its weight N(0, init_std);
    the concat injection starts as [I 0] + noise so that x_1 ~ s_0."""
    rng = np.random.default_rng(seed)
    depth = cfg.n_prelude + cfg.n_layer * cfg.max_loops + cfg.n_coda
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 2)
        if name.endswith("norm.weight") or name == "norm_f.weight":
            w = np.ones(shape)
        elif name.endswith(".bias") and "halt" not in name:
            w = np.zeros(shape)
        elif name.endswith("step_scale"):
            w = np.full(shape, cfg.step_scale_init)
        elif name.endswith("halt.bias"):
            w = np.full(shape, cfg.halt_bias_init)
        else:
            std = cfg.init_std / np.sqrt(2 * depth) if leaf[-2] == "proj" else cfg.init_std
            w = rng.normal(0.0, std, size=shape)
            if name.endswith("inject.weight"):
                w[:, : cfg.d_model] += np.eye(cfg.d_model)
        params[name] = w.astype(dtype)
    return params


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


def check_tokens(tokens, cfg: LoopConfig, name="tokens") -> None:
    """ValueError for anything but an integer (B, T) array with ids in [0, vocab) and T <= block_size."""
    if not hasattr(tokens, "ndim") or tokens.ndim != 2:
        raise ValueError(f"{name} must be a 2-D integer array (batch, time); got shape {getattr(tokens, 'shape', None)}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token ids; got dtype {tokens.dtype}")
    B, T = tokens.shape
    if B < 1:
        raise ValueError(f"{name} hold an empty batch (shape {tokens.shape}): give at least one sequence")
    if T < 1 or T > cfg.block_size:
        raise ValueError(f"{name} has length {T}, must be in [1, block_size={cfg.block_size}]: "
                         f"cut the sequence or raise block_size")
    lo, hi = int(tokens.min()), int(tokens.max())
    floor = -1 if name == "targets" else 0
    if lo < floor or hi >= cfg.vocab_size:
        raise ValueError(f"{name} contain ids in [{lo}, {hi}], outside [{floor}, vocab_size={cfg.vocab_size}): "
                         f"use the tokenizer the model was built for or raise vocab_size")


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


def halting_loss_terms(aux, cfg):
    """(ponder term, kl term) of the loss: halt_penalty * mean ponder cost, pondernet_beta * mean KL."""
    ponder = cfg.halt_penalty * aux["ponder_cost"].mean() if has_halting_unit(cfg) else 0.0
    kl = cfg.pondernet_beta * aux["kl"].mean() if cfg.halt == "pondernet" else 0.0
    return ponder, kl


def check_targets(targets, tokens, cfg: LoopConfig) -> None:
    """Targets: like tokens (ids may also be -1, ignored by the loss) and of the same shape."""
    check_tokens(targets, cfg, "targets")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets shape {targets.shape} differs from tokens shape {tokens.shape}")


def loss(params, tokens, targets, cfg: LoopConfig):
    """Forward-only loss (what loss_and_grads differentiates) and its parts."""
    check_targets(targets, tokens, cfg)
    logits, aux = forward(params, tokens, cfg)
    ce, _ = ops.cross_entropy_forward(logits, targets)
    ponder, kl = halting_loss_terms(aux, cfg)
    return ce + ponder + kl, dict(ce=ce, ponder=ponder, kl=kl, logits=logits, aux=aux)


def forward_backward(params, tokens, targets, cfg: LoopConfig):
    """(loss, grads, logits, aux): everything one training step needs, from one forward pass."""
    check_targets(targets, tokens, cfg)
    logits, aux, (c_emb, c_pre, c_loops, c_coda, c_norm, c_head, T) = forward(params, tokens, cfg, _keep_cache=True)
    ce, c_ce = ops.cross_entropy_forward(logits, targets)
    ponder, kl = halting_loss_terms(aux, cfg)
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
    dtype = logits.dtype
    dponder = xp.full((B, T), cfg.halt_penalty / n if has_halting_unit(cfg) else 0.0, dtype=dtype)
    dkl = xp.full((B, T), cfg.pondernet_beta / n if cfg.halt == "pondernet" else 0.0, dtype=dtype)
    for c in reversed(c_loops):
        dx = loop_backward(dx, dponder, dkl, c, params, cfg, grads)
    dx = stack_backward(dx, c_pre, grads)
    if not cfg.rope:
        dpos = xp.zeros_like(params["pos.weight"])
        dpos[:T] = dx.sum(axis=0)
        add_grad(grads, "pos.weight", dpos)
    add_grad(grads, "embed.weight", ops.embedding_backward(dx, c_emb))
    for name, value in params.items():  # a weight no path reached (e.g. an unused step) gets zeros
        if name not in grads:
            grads[name] = xp.zeros_like(value)
    return ce + ponder + kl, grads, logits, aux


def loss_and_grads(params, tokens, targets, cfg: LoopConfig):
    """(loss, grads) with grads holding exactly the keys of params."""
    total, grads, _, _ = forward_backward(params, tokens, targets, cfg)
    return total, grads
