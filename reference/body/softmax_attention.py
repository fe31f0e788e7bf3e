"""`attention="softmax"`: causal multi-head softmax attention (Vaswani et al. 2017) with optional RoPE.

    y = W_proj concat_h softmax(q_h k_{g(h)}^T / sqrt(hd) + causal mask) v_{g(h)},   [q; k; v] = W_qkv x
With grouped-query attention (Ainslie et al. 2023; n_kv_head = Hkv < H) there are Hkv key/value heads and query head h
reads key/value head g(h) = h // (H / Hkv); Hkv = H (n_kv_head 0) is plain multi-head attention.
Parameters under PREFIX (= "<block>.attn"): qkv.weight ((H + 2 Hkv) hd, D) (3D rows for MHA: the rows of q, then k,
then v), proj.weight (D, D), torch's (out, in) layout.
The math lives in reference.ops.attention_forward / attention_backward; this file is the component around it.
"""
from __future__ import annotations

from .. import ops
from ..params import add_grad, normal, residual_std


def param_specs(prefix: str, cfg) -> dict:
    """qkv ~ N(0, init_std); the output projection writes into the residual stream: N(0, residual_std)."""
    D = cfg.d_model
    return {f"{prefix}.qkv.weight": normal(D + 2 * cfg.kv_heads * cfg.head_dim, D, std=cfg.init_std),
            f"{prefix}.proj.weight": normal(D, D, std=residual_std(cfg))}


def forward(params, prefix: str, x, cfg, rope, op=ops.attention_forward):
    """x: (B, T, D) -> (B, T, D). op: the attention op over these weights (linear_attention.py passes its own)."""
    out, cache = op(x, params[f"{prefix}.qkv.weight"], params[f"{prefix}.proj.weight"], cfg.n_head, rope,
                    n_kv_head=cfg.kv_heads)
    return out, (prefix, cache)


def backward(dout, cache, grads, op=ops.attention_backward):
    """Adds the weight gradients to `grads`; returns dx (B, T, D)."""
    prefix, c = cache
    dx, dw_qkv, dw_proj = op(dout, c)
    add_grad(grads, f"{prefix}.qkv.weight", dw_qkv)
    add_grad(grads, f"{prefix}.proj.weight", dw_proj)
    return dx


def projection_flops(cfg) -> float:
    """Forward FLOPs per token of the projections: q and the output 2 D^2 each, k and v 2 D Hkv hd each
    (2 (3 D^2 + D^2) for multi-head attention)."""
    D = cfg.d_model
    return 2 * (2 * D * D + 2 * D * cfg.kv_heads * cfg.head_dim)


def flops(cfg, seq_len: int) -> float:
    """Forward FLOPs per token: the projections (projection_flops), scores and weighted sum 2 T D each over the full
    context T (causal masking is not discounted, the nanoGPT / PaLM convention)."""
    return projection_flops(cfg) + 4 * seq_len * cfg.d_model
