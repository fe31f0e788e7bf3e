"""Layer ops as forward/backward pairs, llm.c style.

Every `*_forward` returns `(out, cache)`; its `*_backward(dout, cache)` returns the gradients of
the inputs and weights. The math is written once against an array module `xp` (numpy or CuPy), so the
same code runs on the GPU when handed CuPy arrays. Shapes: B batch, T time, D model width,
H heads, hd = D / H head width, V vocabulary, F = mlp_ratio * D.
"""
from __future__ import annotations

import math

import numpy as np


def xp_of(x):
    """The array module of `x`: numpy for numpy arrays, cupy for cupy arrays."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def scatter_add(target, idx, values):
    """target[idx] += values, accumulating repeated indices (np.add.at / cupyx.scatter_add)."""
    if xp_of(target) is np:
        np.add.at(target, idx, values)
    else:
        import cupyx
        cupyx.scatter_add(target, idx, values)
    return target


# ----------------------------------------------------------------------------- embedding
def embedding_forward(weight, idx):
    """out[b, t] = weight[idx[b, t]]."""
    return weight[idx], (idx, weight.shape)  # (B, T, D)


def embedding_backward(dout, cache):
    idx, shape = cache
    xp = xp_of(dout)
    dweight = xp.zeros(shape, dtype=dout.dtype)
    scatter_add(dweight, idx.reshape(-1), dout.reshape(-1, shape[-1]))
    return dweight


# ----------------------------------------------------------------------------- normalisation
def norm_forward(x, weight=None, bias=None, kind="rmsnorm", eps=1e-5):
    """RMSNorm: y = x / sqrt(mean(x^2) + eps) * w.  LayerNorm: y = (x - mean) / sqrt(var + eps) * w + b.

    weight=None means a unit gain (used by the halting unit, whose own weight absorbs the scale).
    """
    xp = xp_of(x)
    if kind == "rmsnorm":
        rstd = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)  # (..., 1)
        xhat = x * rstd
    else:
        mu = xp.mean(x, axis=-1, keepdims=True)
        xc = x - mu
        rstd = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=-1, keepdims=True) + eps)
        xhat = xc * rstd
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias
    return y, (xhat, rstd, weight, bias is not None, kind)


def norm_backward(dy, cache):
    """Returns (dx, dweight, dbias); dweight/dbias are None where the forward had none."""
    xhat, rstd, weight, has_bias, kind = cache
    xp = xp_of(dy)
    lead = tuple(range(dy.ndim - 1))
    dweight = None if weight is None else xp.sum(dy * xhat, axis=lead)
    dbias = xp.sum(dy, axis=lead) if has_bias else None
    dxhat = dy if weight is None else dy * weight
    proj = xp.mean(dxhat * xhat, axis=-1, keepdims=True)
    if kind == "rmsnorm":
        dx = rstd * (dxhat - xhat * proj)
    else:
        dx = rstd * (dxhat - xp.mean(dxhat, axis=-1, keepdims=True) - xhat * proj)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- linear (torch layout)
def linear_forward(x, weight):
    """y = x @ W^T with W of shape (out, in), the layout of torch.nn.Linear."""
    return x @ weight.T, (x, weight)


def linear_backward(dy, cache):
    x, weight = cache
    dx = dy @ weight
    dweight = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in)
    return dx, dweight


# ----------------------------------------------------------------------------- activations
_GELU_C = math.sqrt(2.0 / math.pi)


def activation_forward(x, kind="gelu"):
    """gelu (tanh approximation): 0.5 x (1 + tanh(c (x + 0.044715 x^3))), relu, or silu: x sigmoid(x)."""
    xp = xp_of(x)
    if kind == "relu":
        return xp.maximum(x, 0), (x, kind, None)
    if kind == "silu":
        sig = 1.0 / (1.0 + xp.exp(-x))
        return x * sig, (x, kind, sig)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1.0 + t), (x, kind, t)


def activation_backward(dy, cache):
    x, kind, t = cache
    if kind == "relu":
        return dy * (x > 0)
    if kind == "silu":  # d/dx x s(x) = s + x s (1 - s)
        return dy * (t * (1.0 + x * (1.0 - t)))
    dt = _GELU_C * (1.0 + 3 * 0.044715 * x * x) * (1.0 - t * t)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * dt)


# ----------------------------------------------------------------------------- rotary embeddings
def rope_tables(T, head_dim, base, xp, dtype):
    """cos, sin of shape (T, head_dim/2): angle[t, i] = t * base^(-2i / head_dim)."""
    inv_freq = 1.0 / base ** (xp.arange(0, head_dim, 2, dtype=xp.float64) / head_dim)
    angle = xp.arange(T, dtype=xp.float64)[:, None] * inv_freq[None, :]
    return xp.cos(angle).astype(dtype), xp.sin(angle).astype(dtype)


def rope_forward(x, cos, sin):
    """Rotate the pairs (x1_i, x2_i) of the two halves of the last axis by angle (t, i). x: (B, H, T, hd)."""
    xp = xp_of(x)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return xp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def rope_backward(dy, cos, sin):
    """A rotation's transpose is the rotation by minus the angle."""
    return rope_forward(dy, cos, -sin)


# ----------------------------------------------------------------------------- attention
def split_heads(qkv, n_head, n_kv_head=None):
    """[q; k; v] (B, T, (H + 2 Hkv) hd) -> q (B, H, T, hd), k and v (B, Hkv, T, hd). Hkv = n_kv_head (default H)."""
    B, T, width = qkv.shape
    kv = n_kv_head or n_head
    hd = width // (n_head + 2 * kv)
    cuts = (0, n_head * hd, (n_head + kv) * hd, width)
    return tuple(qkv[..., a:b].reshape(B, T, -1, hd).transpose(0, 2, 1, 3) for a, b in zip(cuts, cuts[1:]))


def merge_heads(*heads):
    """The inverse of split_heads: (B, H_i, T, hd) pieces -> (B, T, sum_i H_i hd), concatenated in order."""
    xp = xp_of(heads[0])
    B, _, T, hd = heads[0].shape
    return xp.concatenate([t.transpose(0, 2, 1, 3).reshape(B, T, -1) for t in heads], axis=-1)


def repeat_kv(t, groups: int):
    """Grouped-query attention (Ainslie et al. 2023): key/value head j serves the query heads j G .. j G + G - 1.
    (B, Hkv, T, hd) -> (B, Hkv G, T, hd); HF's repeat_kv layout."""
    return t if groups == 1 else xp_of(t).repeat(t, groups, axis=1)


def repeat_kv_backward(dt, groups: int):
    """The gradient of repeat_kv: each key/value head sums the gradients of the G query heads it served."""
    if groups == 1:
        return dt
    B, H, T, hd = dt.shape
    return dt.reshape(B, H // groups, groups, T, hd).sum(axis=2)


def attention_forward(x, w_qkv, w_proj, n_head, rope=None, n_kv_head=None):
    """Causal multi-head self-attention: softmax(q k^T / sqrt(hd) + causal mask) v, then a projection.

    x: (B, T, D); w_qkv: ((H + 2 Hkv) hd, D), the rows of q, then k, then v (3D rows for MHA); w_proj: (D, D);
    rope: (cos, sin) tables or None; n_kv_head: Hkv key/value heads, each shared by H / Hkv query heads (None = H).
    """
    xp = xp_of(x)
    (B, T, _), D = x.shape, w_proj.shape[0]  # D from w_proj: x may carry more inputs (softmax_attention's x_kv)
    hd = D // n_head
    groups = n_head // (n_kv_head or n_head)
    qkv, c_qkv = linear_forward(x, w_qkv)  # (B, T, (H + 2 Hkv) hd)
    q, k, v = split_heads(qkv, n_head, n_kv_head)  # (B, H, T, hd), (B, Hkv, T, hd) x 2
    if rope is not None:
        q, k = rope_forward(q, *rope), rope_forward(k, *rope)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, T, hd)
    scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(hd)  # (B, H, T, T)
    causal = xp.tril(xp.ones((T, T), dtype=bool))
    scores = xp.where(causal, scores, -xp.inf)
    scores = scores - xp.max(scores, axis=-1, keepdims=True)
    att = xp.exp(scores)
    att = att / xp.sum(att, axis=-1, keepdims=True)  # (B, H, T, T)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
    out, c_proj = linear_forward(y, w_proj)
    return out, (c_qkv, c_proj, q, k, v, att, rope, n_head, groups)


def attention_backward(dout, cache):
    """Returns (dx, dw_qkv, dw_proj)."""
    c_qkv, c_proj, q, k, v, att, rope, n_head, groups = cache
    xp = xp_of(dout)
    B, T, D = dout.shape
    hd = D // n_head
    dy, dw_proj = linear_backward(dout, c_proj)
    dy = dy.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
    datt = dy @ v.transpose(0, 1, 3, 2)  # (B, H, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dy
    dscores = att * (datt - xp.sum(datt * att, axis=-1, keepdims=True)) / math.sqrt(hd)  # softmax backward
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    dk, dv = repeat_kv_backward(dk, groups), repeat_kv_backward(dv, groups)  # (B, Hkv, T, hd)
    if rope is not None:
        dq, dk = rope_backward(dq, *rope), rope_backward(dk, *rope)
    dx, dw_qkv = linear_backward(merge_heads(dq, dk, dv), c_qkv)
    return dx, dw_qkv, dw_proj


# ----------------------------------------------------------------------------- MLP
def mlp_forward(x, w_fc, w_proj, activation="gelu"):
    """proj(act(fc(x))): (B, T, D) -> (B, T, F) -> (B, T, D)."""
    h, c_fc = linear_forward(x, w_fc)
    a, c_act = activation_forward(h, activation)
    out, c_proj = linear_forward(a, w_proj)
    return out, (c_fc, c_act, c_proj)


def mlp_backward(dout, cache):
    """Returns (dx, dw_fc, dw_proj)."""
    c_fc, c_act, c_proj = cache
    da, dw_proj = linear_backward(dout, c_proj)
    dh = activation_backward(da, c_act)
    dx, dw_fc = linear_backward(dh, c_fc)
    return dx, dw_fc, dw_proj


def swiglu_forward(x, w_fc, w_gate, w_proj):
    """The gated MLP (Shazeer 2020, "GLU variants"; Llama's): proj(silu(gate(x)) * fc(x)), with fc = Llama's up_proj,
    gate = gate_proj, proj = down_proj. (B, T, D) -> (B, T, F) -> (B, T, D)."""
    u, c_fc = linear_forward(x, w_fc)
    g, c_gate = linear_forward(x, w_gate)
    s, c_act = activation_forward(g, "silu")
    out, c_proj = linear_forward(s * u, w_proj)
    return out, (c_fc, c_gate, c_act, c_proj, u, s)


def swiglu_backward(dout, cache):
    """Returns (dx, dw_fc, dw_gate, dw_proj)."""
    c_fc, c_gate, c_act, c_proj, u, s = cache
    da, dw_proj = linear_backward(dout, c_proj)
    dx_u, dw_fc = linear_backward(da * s, c_fc)
    dx_g, dw_gate = linear_backward(activation_backward(da * u, c_act), c_gate)
    return dx_u + dx_g, dw_fc, dw_gate, dw_proj


# ----------------------------------------------------------------------------- loss
IGNORE_INDEX = -1


def cross_entropy_forward(logits, targets):
    """Mean over the targets != -1 of -log softmax(logits)[target]. logits (B, T, V), targets (B, T)."""
    nll, cache = token_cross_entropy_forward(logits, targets)
    xp = xp_of(logits)
    return xp.sum(nll) / cache[-1], cache


def cross_entropy_backward(dloss, cache):
    xp = xp_of(cache[0])
    dnll = xp.full(cache[1].shape, dloss / cache[-1], dtype=cache[0].dtype)  # every real target weighs 1 / n_valid
    return token_cross_entropy_backward(dnll, cache)


def token_cross_entropy_forward(logits, targets):
    """Per-token -log softmax(logits)[target] (B, T), 0 where the target is the ignore index -1; the cache ends with
    the number of real targets. logits (B, T, V), targets (B, T)."""
    xp = xp_of(logits)
    valid = targets != IGNORE_INDEX
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("cross_entropy: every target is the ignore index -1; give at least one real target")
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    logp = z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))  # (B, T, V)
    safe = xp.where(valid, targets, 0)
    nll = -xp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0] * valid  # (B, T)
    return nll, (logp, safe, valid, n_valid)


def token_cross_entropy_backward(dnll, cache):
    """dlogits (B, T, V) from d loss / d nll (B, T)."""
    logp, safe, valid, _ = cache
    xp = xp_of(logp)
    onehot = xp.arange(logp.shape[-1])[None, None, :] == safe[..., None]
    return (xp.exp(logp) - onehot) * (dnll * valid)[..., None].astype(logp.dtype)
