"""The output of the model from a state: coda blocks -> final norm -> logits = x @ W_head^T (W_head = embed.weight
when tied). The model applies it to the loop's output; the exit gate's expected loss applies it to every step."""
from __future__ import annotations

from . import ops
from .block import add_norm_grads, norm_params, stack_backward, stack_forward
from .params import add_grad


def coda_names(cfg):
    return [f"coda.{i}" for i in range(cfg.n_coda)]


def head_weight(params, cfg):
    return params["embed.weight"] if cfg.tie_embeddings else params["lm_head.weight"]


def head_forward(params, x, cfg, rope):
    """x (B, T, D) -> logits (B, T, V), cache."""
    x, c_coda = stack_forward(params, coda_names(cfg), x, cfg, rope)
    xn, c_norm = ops.norm_forward(x, *norm_params(params, "norm_f"), kind=cfg.norm, eps=cfg.norm_eps)
    logits, c_head = ops.linear_forward(xn, head_weight(params, cfg))
    return logits, (c_coda, c_norm, c_head, cfg.tie_embeddings)


def head_backward(dlogits, cache, grads):
    """Adds the coda's, final norm's and head's weight gradients to `grads`; returns dx (B, T, D)."""
    c_coda, c_norm, c_head, tied = cache
    dxn, dw_head = ops.linear_backward(dlogits, c_head)
    add_grad(grads, "embed.weight" if tied else "lm_head.weight", dw_head)
    dx, dw, db = ops.norm_backward(dxn, c_norm)
    add_norm_grads(grads, "norm_f", dw, db)
    return stack_backward(dx, c_coda, grads)
