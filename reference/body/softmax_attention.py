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


def forward(params, prefix: str, x, cfg, rope, op=ops.attention_forward, x_kv=None, kv_const=None):
    """x: (B, T, D) -> (B, T, D). op: the attention op over these weights (linear_attention.py passes its own).
    x_kv: (B, T, D) or None: the inputs whose keys and values each position supplies (queries still from x); a loop
    step under halted_kv="frozen" passes its halted tokens' held inputs there (reference/loop.py). kv_const: (B, T)
    bool or None: the positions whose keys/values are constants (held from a step truncated backprop holds constant):
    no gradient from them, to the weights or to x_kv."""
    xp, w_qkv, D = ops.xp_of(x), params[f"{prefix}.qkv.weight"], x.shape[-1]
    if x_kv is None:
        out, cache = op(x, w_qkv, params[f"{prefix}.proj.weight"], cfg.n_head, rope, n_kv_head=cfg.kv_heads)
        return out, (prefix, cache, None)
    # [q; k; v] = [W_q x; W_kv x_kv]: the op's own projection of [x, x_kv (live rows), x_kv (constant rows)] by the
    # block weight [[W_q, 0, 0], [0, W_kv, W_kv]], so that the constant rows' share of the gradient can be dropped
    const = xp.zeros(x.shape[:2], dtype=bool) if kv_const is None else kv_const
    w_split = xp.zeros((w_qkv.shape[0], 3 * D), dtype=w_qkv.dtype)  # ((H + 2 Hkv) hd, 3 D)
    w_split[:D, :D], w_split[D:, D:2 * D], w_split[D:, 2 * D:] = w_qkv[:D], w_qkv[D:], w_qkv[D:]
    parts = [x, xp.where(const[..., None], 0.0, x_kv), xp.where(const[..., None], x_kv, 0.0)]
    out, cache = op(xp.concatenate(parts, axis=-1), w_split, params[f"{prefix}.proj.weight"], cfg.n_head, rope,
                    n_kv_head=cfg.kv_heads)
    return out, (prefix, cache, (D, const))


def backward(dout, cache, grads, op=ops.attention_backward):
    """Adds the weight gradients to `grads`; returns dx (B, T, D), or (dx, dx_kv) when the forward had x_kv."""
    prefix, c, split = cache
    dx, dw_qkv, dw_proj = op(dout, c)
    if split is not None:  # W_qkv's blocks of the split weight, less the constant rows' one
        D, const = split
        dw_qkv = ops.xp_of(dx).concatenate([dw_qkv[:D, :D], dw_qkv[D:, D:2 * D]], axis=0)
        dx = dx[..., :D], ops.xp_of(dx).where(const[..., None], 0.0, dx[..., D:2 * D])
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
