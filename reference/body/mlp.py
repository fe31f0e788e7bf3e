"""`ffn="mlp"`: the two-layer feed-forward body y = W_proj act(W_fc x), act = gelu (tanh form) or relu.

Parameters under PREFIX (= "<block>.mlp"): fc.weight (F, D), proj.weight (D, F), F = mlp_ratio * D.
The math lives in reference.ops.mlp_forward / mlp_backward; this file is the component around it.
"""
from __future__ import annotations

from .. import ops
from ..params import add_grad, normal, residual_std


def param_specs(prefix: str, cfg) -> dict:
    """fc ~ N(0, init_std); the output projection writes into the residual stream: N(0, residual_std)."""
    D, F = cfg.d_model, cfg.mlp_ratio * cfg.d_model
    return {f"{prefix}.fc.weight": normal(F, D, std=cfg.init_std),
            f"{prefix}.proj.weight": normal(D, F, std=residual_std(cfg))}


def forward(params, prefix: str, x, cfg, rope=None):
    """x: (B, T, D) -> (B, T, D)."""
    out, cache = ops.mlp_forward(x, params[f"{prefix}.fc.weight"], params[f"{prefix}.proj.weight"], cfg.activation)
    return out, (prefix, cache)


def backward(dout, cache, grads):
    """Adds the weight gradients to `grads`; returns dx (B, T, D)."""
    prefix, c = cache
    dx, dw_fc, dw_proj = ops.mlp_backward(dout, c)
    add_grad(grads, f"{prefix}.fc.weight", dw_fc)
    add_grad(grads, f"{prefix}.proj.weight", dw_proj)
    return dx


def flops(cfg, seq_len: int) -> float:
    """Forward FLOPs per token: two matmuls, 2 * 2 F D."""
    return 2 * 2 * cfg.mlp_ratio * cfg.d_model * cfg.d_model
