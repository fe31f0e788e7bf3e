"""`ffn="mlp"`: the two-layer feed-forward body y = W_proj act(W_fc x), act = gelu (tanh form) or relu; or, with
activation="swiglu", the gated MLP of Llama (Shazeer 2020): y = W_proj (silu(W_gate x) * W_fc x).

Parameters under PREFIX (= "<block>.mlp"): fc.weight (F, D), [gate.weight (F, D) for swiglu,] proj.weight (D, F),
F = cfg.ffn_width (mlp_ratio * D unless ffn_hidden). Llama's names: fc = up_proj, gate = gate_proj, proj = down_proj.
The math lives in reference.ops.mlp_forward / swiglu_forward and their backward; this file is the component around it.
"""
from __future__ import annotations

from .. import ops
from ..params import add_grad, normal, residual_std

GATED = "swiglu"  # the activation that adds the gate matrix


def param_specs(prefix: str, cfg) -> dict:
    """fc (and gate) ~ N(0, init_std); the output projection writes into the residual stream: N(0, residual_std)."""
    D, F = cfg.d_model, cfg.ffn_width
    specs = {f"{prefix}.fc.weight": normal(F, D, std=cfg.init_std)}
    if cfg.activation == GATED:
        specs[f"{prefix}.gate.weight"] = normal(F, D, std=cfg.init_std)
    specs[f"{prefix}.proj.weight"] = normal(D, F, std=residual_std(cfg))
    return specs


def forward(params, prefix: str, x, cfg, rope=None):
    """x: (B, T, D) -> (B, T, D)."""
    if cfg.activation == GATED:
        out, cache = ops.swiglu_forward(x, *(params[f"{prefix}.{n}.weight"] for n in ("fc", "gate", "proj")))
        return out, (prefix, ("fc", "gate", "proj"), ops.swiglu_backward, cache)
    out, cache = ops.mlp_forward(x, params[f"{prefix}.fc.weight"], params[f"{prefix}.proj.weight"], cfg.activation)
    return out, (prefix, ("fc", "proj"), ops.mlp_backward, cache)


def backward(dout, cache, grads):
    """Adds the weight gradients to `grads`; returns dx (B, T, D)."""
    prefix, names, op_backward, c = cache
    dx, *dws = op_backward(dout, c)
    for name, dw in zip(names, dws):
        add_grad(grads, f"{prefix}.{name}.weight", dw)
    return dx


def flops(cfg, seq_len: int) -> float:
    """Forward FLOPs per token: 2 F D per matrix, two matrices (three for swiglu)."""
    return 2 * (3 if cfg.activation == GATED else 2) * cfg.ffn_width * cfg.d_model
