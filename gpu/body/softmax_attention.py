"""Torch twin of reference/body/softmax_attention.py: causal multi-head softmax attention with optional RoPE.

Two entry points over the same weights:
- `forward(x, rope_cs)`: every position attends to itself and the positions before it (fused SDPA, is_causal);
- `attend(x_q, positions, k, v, rope_cs)`: queries for a subset of positions against a key/value source; the mask is
  key position <= query position (and an optional key mask, for left padding), fused by SDPA with that mask. This
  is what a compacting executor (only the running tokens) and a KV cache (the new token against the cached keys)
  call, with the same maths: tested equal to the full form, row by row.
Grouped-query attention (n_kv_head = Hkv < H): `project` returns k, v with Hkv heads (what a KV cache stores), and
query head h reads key/value head h // (H / Hkv) (reference.ops.repeat_kv).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import rope


def split_heads(qkv, n_head, n_kv_head=None):
    """[q; k; v] (B, T, (H + 2 Hkv) hd) -> q (B, H, T, hd), k and v (B, Hkv, T, hd) (reference.ops.split_heads)."""
    B, T, width = qkv.shape
    kv = n_kv_head or n_head
    hd = width // (n_head + 2 * kv)
    q, k, v = qkv.split([n_head * hd, kv * hd, kv * hd], dim=-1)
    return tuple(t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))


def attention(x, w_qkv, w_proj, n_head, rope_cs=None, n_kv_head=None):
    """Causal multi-head self-attention, softmax(q k^T / sqrt(hd) + causal mask) v, then a projection.
    Fused by scaled_dot_product_attention. x: (B, T, D); w_qkv: ((H + 2 Hkv) hd, D); w_proj: (D, D);
    rope_cs: (cos, sin); n_kv_head: Hkv key/value heads (None = H)."""
    B, T, D = x.shape
    q, k, v = split_heads(F.linear(x, w_qkv), n_head, n_kv_head)  # (B, H, T, hd), (B, Hkv, T, hd) x 2
    if rope_cs is not None:
        q, k = rope(q, *rope_cs), rope(k, *rope_cs)
    gqa = k.shape[1] != n_head
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, H, T, hd)
    return F.linear(y.transpose(1, 2).reshape(B, T, D), w_proj)


def grouped(q, n_kv):
    """(B, H, Tq, hd) queries -> (B, Hkv, H / Hkv, Tq, hd): the query heads that share each key/value head."""
    B, H, Tq, hd = q.shape
    return q.view(B, n_kv, H // n_kv, Tq, hd)


def rope_at(t, rope_cs, positions):
    """RoPE of t (B, H, Tq, hd) whose rows sit at positions (B, Tq)."""
    if rope_cs is None:
        return t
    cos, sin = (table[positions][:, None] for table in rope_cs)  # (B, 1, Tq, hd/2)
    return rope(t, cos, sin)


class SoftmaxAttention(nn.Module):
    """Parameters qkv.weight ((H + 2 Hkv) hd, D) (3D rows for MHA), proj.weight (D, D), under the block's `attn.`
    prefix."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.kv_heads
        self.qkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * cfg.kv_heads * cfg.head_dim, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, rope_cs):  # (B, T, D) -> (B, T, D)
        return attention(x, self.qkv.weight, self.proj.weight, self.n_head, rope_cs, self.n_kv_head)

    def project(self, x, positions, rope_cs):
        """q (B, H, T, hd), k and v (B, Hkv, T, hd) of inputs x (B, T, D) sitting at positions (B, T), RoPE applied
        to q and k."""
        q, k, v = split_heads(F.linear(x, self.qkv.weight), self.n_head, self.n_kv_head)
        return rope_at(q, rope_cs, positions), rope_at(k, rope_cs, positions), v

    def attend(self, x_q, positions, k, v, rope_cs, key_positions=None, key_mask=None, q=None):
        """Queries from x_q (B, Tq, D) at positions (B, Tq) against keys/values k, v (B, Hkv, Tk, hd) at
        key_positions (B, Tk) (default 0..Tk-1): softmax(q k^T / sqrt(hd), masked to key position <= query
        position) v, projected. -> (B, Tq, D). key_mask: (B, Tk) or (B, Tq, Tk) bool, False = never read (left
        padding); q: the queries `project` already gave for x_q (a KV cache projects once)."""
        B, Tq, D = x_q.shape
        if q is None:
            q, _, _ = self.project(x_q, positions, rope_cs)
        if key_positions is None:
            key_positions = torch.arange(k.shape[2], device=k.device).expand(B, -1)
        visible = key_positions[:, None, None, None, :] <= positions[:, None, None, :, None]  # (B, 1, 1, Tq, Tk)
        if key_mask is not None:
            visible = visible & (key_mask[:, None] if key_mask.ndim == 2 else key_mask)[:, None, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, 0], enable_gqa=k.shape[1] != self.n_head)
        return F.linear(y.transpose(1, 2).reshape(B, Tq, D), self.proj.weight)  # y (B, H, Tq, hd)
