"""Torch twins of the shared ops of reference/ops.py: norms and RoPE (the bodies live in gpu/body/, the block in
gpu/block.py). Each op is a plain function (what the equivalence suite compares with the reference op)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = 1e-5  # reference.ops.norm_forward's default eps (LoopConfig.norm_eps's default)


def norm(x, weight=None, bias=None, kind="rmsnorm", eps=NORM_EPS):
    """RMSNorm y = x / sqrt(mean(x^2) + eps) * w, or LayerNorm y = (x - mean) / sqrt(var + eps) * w + b.
    weight=None is a unit gain (the halting unit's norm). (..., D) -> (..., D)."""
    if kind == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:], weight, eps)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


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


class Norm(nn.Module):
    """A norm with a gain `weight` (D,) and, for LayerNorm, a `bias` (D,); eps = LoopConfig.norm_eps."""

    def __init__(self, D, kind, eps=NORM_EPS):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(D))
        self.bias = nn.Parameter(torch.zeros(D)) if kind == "layernorm" else None

    def forward(self, x):
        return norm(x, self.weight, self.bias, self.kind, self.eps)
