"""`attention="linear"`: causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

With the feature map phi(x) = elu(x) + 1 (> 0) on each head's queries and keys,
    out_t = phi(q_t)^T S_t / phi(q_t)^T z_t,   S_t = sum_{j<=t} phi(k_j) v_j^T,   z_t = sum_{j<=t} phi(k_j),
a recurrence whose state (S_t, z_t) has a fixed size: cost linear in T. This reference computes the same numbers in
the readable quadratic masked form, A = causal-masked phi(Q) phi(K)^T, out = A V / (A 1), with its hand-written
backward; tests/test_bodies.py checks the prefix-sum form against it, and the torch twin uses the prefix sums.
RoPE (rope=True) rotates the features in the numerator only, as RoFormer does for linear attention (Su et al. 2021,
eq. 19): A_num = mask(R phi(Q) (R phi(K))^T), den = mask(phi(Q) phi(K)^T) 1, out = A_num V / den; the denominator
stays positive. There is no 1/sqrt(d_h) scale (the normaliser makes each row scale-free).
Grouped-query heads (n_kv_head = Hkv < H): each key/value head serves H / Hkv query heads (reference.ops.repeat_kv).
Parameters under PREFIX (= "<block>.attn"): the softmax body's, qkv.weight ((H + 2 Hkv) hd, D), proj.weight (D, D).
"""
from __future__ import annotations

from .. import ops
from . import softmax_attention
from .softmax_attention import param_specs  # noqa: F401  (the same weights as the softmax body)


def elu1(x):
    """phi(x) = elu(x) + 1: x + 1 for x > 0, exp(x) otherwise; its derivative 1 or exp(x) is continuous."""
    xp = ops.xp_of(x)
    e = xp.exp(xp.minimum(x, 0.0))
    return xp.where(x > 0, x + 1.0, e), xp.where(x > 0, 1.0, e)


def _heads(t, n_head, n_kv_head=None):
    """(B, T, (H + 2 Hkv) hd) -> q (B, H, T, hd), k, v (B, Hkv, T, hd): the heads of each (ops.split_heads)."""
    return ops.split_heads(t, n_head, n_kv_head)


def linear_attention_forward(x, w_qkv, w_proj, n_head, rope=None, n_kv_head=None):
    """x: (B, T, D); w_qkv: ((H + 2 Hkv) hd, D); w_proj: (D, D); rope: (cos, sin) tables or None; n_kv_head: Hkv
    (None = H) -> (out (B, T, D), cache)."""
    xp = ops.xp_of(x)
    (B, T, _), D = x.shape, w_proj.shape[0]  # D from w_proj: x may carry more inputs (softmax_attention's x_kv)
    groups = n_head // (n_kv_head or n_head)
    qkv, c_qkv = ops.linear_forward(x, w_qkv)
    q, k, v = _heads(qkv, n_head, n_kv_head)  # (B, H, T, hd), (B, Hkv, T, hd) x 2
    k, v = ops.repeat_kv(k, groups), ops.repeat_kv(v, groups)  # (B, H, T, hd): phi is elementwise, so repeat first
    (fq, gq), (fk, gk) = elu1(q), elu1(k)
    rq, rk = (ops.rope_forward(fq, *rope), ops.rope_forward(fk, *rope)) if rope is not None else (fq, fk)
    mask = xp.tril(xp.ones((T, T), dtype=x.dtype))
    a_num = (rq @ rk.transpose(0, 1, 3, 2)) * mask  # (B, H, T, T)
    den = xp.sum((fq @ fk.transpose(0, 1, 3, 2)) * mask, axis=-1, keepdims=True)  # (B, H, T, 1), > 0
    y = (a_num @ v) / den
    out, c_proj = ops.linear_forward(y.transpose(0, 2, 1, 3).reshape(B, T, D), w_proj)
    return out, (c_qkv, c_proj, v, fq, fk, gq, gk, rq, rk, mask, a_num, den, y, rope, n_head, groups)


def linear_attention_backward(dout, cache):
    """Returns (dx, dw_qkv, dw_proj)."""
    xp = ops.xp_of(dout)
    c_qkv, c_proj, v, fq, fk, gq, gk, rq, rk, mask, a_num, den, y, rope, n_head, groups = cache
    B, T, D = dout.shape
    T_ = lambda t: t.transpose(0, 1, 3, 2)  # noqa: E731
    dy_flat, dw_proj = ops.linear_backward(dout, c_proj)
    dy = dy_flat.reshape(B, T, n_head, D // n_head).transpose(0, 2, 1, 3)  # (B, H, T, hd)
    dnum = dy / den  # gradient of A_num V
    dden = -xp.sum(dy * y, axis=-1, keepdims=True) / den  # (B, H, T, 1)
    da_num = (dnum @ T_(v)) * mask
    dv = T_(a_num) @ dnum
    drq, drk = da_num @ rk, T_(da_num) @ rq
    if rope is not None:
        drq, drk = ops.rope_backward(drq, *rope), ops.rope_backward(drk, *rope)
    da_den = dden * mask  # every visible key j adds phi(q_t) . phi(k_j) to the denominator of row t
    dq = (drq + da_den @ fk) * gq
    dk = (drk + T_(da_den) @ fq) * gk
    dk, dv = ops.repeat_kv_backward(dk, groups), ops.repeat_kv_backward(dv, groups)  # (B, Hkv, T, hd)
    dx, dw_qkv = ops.linear_backward(ops.merge_heads(dq, dk, dv), c_qkv)
    return dx, dw_qkv, dw_proj


def forward(params, prefix: str, x, cfg, rope, x_kv=None, kv_const=None):
    """x: (B, T, D) -> (B, T, D); x_kv, kv_const: the keys' and values' inputs, as in softmax_attention.forward."""
    return softmax_attention.forward(params, prefix, x, cfg, rope, op=linear_attention_forward, x_kv=x_kv,
                                     kv_const=kv_const)


def backward(dout, cache, grads):
    """Adds the weight gradients to `grads`; returns dx (B, T, D), or (dx, dx_kv) when the forward had x_kv."""
    return softmax_attention.backward(dout, cache, grads, op=linear_attention_backward)


def flops(cfg, seq_len: int) -> float:
    """Forward FLOPs per token of the recurrent form (independent of T): the projections (softmax_attention's
    projection_flops), the state update phi(k) v^T and the read phi(q)^T S, 2 d_h^2 each per head (4 D d_h), and the
    normaliser's z and phi(q)^T z, 2 d_h each per head (4 D)."""
    D = cfg.d_model
    return softmax_attention.projection_flops(cfg) + 4 * D * cfg.head_dim + 4 * D
