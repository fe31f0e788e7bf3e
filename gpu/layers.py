"""Torch twins of reference/ops.py and reference/block.py: norms, RoPE, causal attention, MLP, the pre-norm block.

Each op is a plain function (what the equivalence suite compares with the reference op) and the modules only
hold the weights, under the reference's parameter names. Linear weights are (out, in), as in the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = 1e-5  # reference.ops.norm_forward's eps


def norm(x, weight=None, bias=None, kind="rmsnorm"):
    """RMSNorm y = x / sqrt(mean(x^2) + eps) * w, or LayerNorm y = (x - mean) / sqrt(var + eps) * w + b.
    weight=None is a unit gain (the halting unit's norm). (..., D) -> (..., D)."""
    if kind == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:], weight, NORM_EPS)
    return F.layer_norm(x, x.shape[-1:], weight, bias, NORM_EPS)


def rope_tables(T, head_dim, base, device=None):
    """cos, sin (T, head_dim/2) in float64: angle[t, i] = t * base^(-2i / head_dim) (reference.ops.rope_tables)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angle = torch.arange(T, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return angle.cos(), angle.sin()


def rope(x, cos, sin):
    """Rotate the pairs (x1_i, x2_i) of the two halves of the last axis by angle (t, i). x: (B, H, T, hd)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention(x, w_qkv, w_proj, n_head, rope_cs=None):
    """Causal multi-head self-attention, softmax(q k^T / sqrt(hd) + causal mask) v, then a projection.
    Fused by scaled_dot_product_attention. x: (B, T, D); w_qkv: (3D, D); w_proj: (D, D); rope_cs: (cos, sin)."""
    B, T, D = x.shape
    q, k, v = F.linear(x, w_qkv).view(B, T, 3, n_head, D // n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
    if rope_cs is not None:
        q, k = rope(q, *rope_cs), rope(k, *rope_cs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
    return F.linear(y.transpose(1, 2).reshape(B, T, D), w_proj)


def mlp(x, w_fc, w_proj, activation="gelu"):
    """proj(act(fc(x))), gelu in its tanh approximation: (B, T, D) -> (B, T, F) -> (B, T, D)."""
    h = F.linear(x, w_fc)
    h = F.gelu(h, approximate="tanh") if activation == "gelu" else F.relu(h)
    return F.linear(h, w_proj)


class Norm(nn.Module):
    def __init__(self, D, kind):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(D))
        self.bias = nn.Parameter(torch.zeros(D)) if kind == "layernorm" else None

    def forward(self, x):
        return norm(x, self.weight, self.bias, self.kind)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, rope_cs):
        return attention(x, self.qkv.weight, self.proj.weight, self.n_head, rope_cs)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.activation = cfg.activation
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return mlp(x, self.fc.weight, self.proj.weight, self.activation)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)) (reference.block.block_forward)."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = Norm(cfg.d_model, cfg.norm)
        self.attn = Attention(cfg)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm)
        self.mlp = MLP(cfg)

    def forward(self, x, rope_cs):  # (B, T, D) -> (B, T, D)
        x = x + self.attn(self.attn_norm(x), rope_cs)
        return x + self.mlp(self.mlp_norm(x))
