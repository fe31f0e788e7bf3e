"""Torch twin of reference/body/softmax_attention.py: causal multi-head softmax attention with optional RoPE.

Two entry points over the same weights:
- `forward(x, rope_cs)`: every position attends to itself and the positions before it (fused SDPA, is_causal);
- `attend(x_q, positions, k, v, rope_cs)`: queries for a subset of positions against a key/value source; the mask is
  key position <= query position. This is what a compacting executor (only the running tokens) and a KV cache (the
  new token against the cached keys) call, with the same maths: tested equal to the full form, row by row.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import rope


def attention(x, w_qkv, w_proj, n_head, rope_cs=None):
    """Causal multi-head self-attention, softmax(q k^T / sqrt(hd) + causal mask) v, then a projection.
    Fused by scaled_dot_product_attention. x: (B, T, D); w_qkv: (3D, D); w_proj: (D, D); rope_cs: (cos, sin)."""
    B, T, D = x.shape
    q, k, v = F.linear(x, w_qkv).view(B, T, 3, n_head, D // n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
    if rope_cs is not None:
        q, k = rope(q, *rope_cs), rope(k, *rope_cs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
    return F.linear(y.transpose(1, 2).reshape(B, T, D), w_proj)


def rope_at(t, rope_cs, positions):
    """RoPE of t (B, H, Tq, hd) whose rows sit at positions (B, Tq)."""
    if rope_cs is None:
        return t
    cos, sin = (table[positions][:, None] for table in rope_cs)  # (B, 1, Tq, hd/2)
    return rope(t, cos, sin)


class SoftmaxAttention(nn.Module):
    """Parameters qkv.weight (3D, D), proj.weight (D, D), under the block's `attn.` prefix."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, rope_cs):  # (B, T, D) -> (B, T, D)
        return attention(x, self.qkv.weight, self.proj.weight, self.n_head, rope_cs)

    def project(self, x, positions, rope_cs):
        """q, k, v (B, H, T, hd) of inputs x (B, T, D) sitting at positions (B, T), RoPE applied to q and k."""
        B, T, D = x.shape
        q, k, v = F.linear(x, self.qkv.weight).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        return rope_at(q, rope_cs, positions), rope_at(k, rope_cs, positions), v

    def attend(self, x_q, positions, k, v, rope_cs, key_positions=None):
        """Queries from x_q (B, Tq, D) at positions (B, Tq) against keys/values k, v (B, H, Tk, hd) at key_positions
        (B, Tk) (default 0..Tk-1): softmax(q k^T / sqrt(hd), masked to key position <= query position) v, projected.
        -> (B, Tq, D)."""
        B, Tq, D = x_q.shape
        q, _, _ = self.project(x_q, positions, rope_cs)
        if key_positions is None:
            key_positions = torch.arange(k.shape[2], device=k.device).expand(B, -1)
        visible = key_positions[:, None, None, :] <= positions[:, None, :, None]  # (B, 1, Tq, Tk)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // self.n_head)
        y = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1) @ v  # (B, H, Tq, hd)
        return F.linear(y.transpose(1, 2).reshape(B, Tq, D), self.proj.weight)
