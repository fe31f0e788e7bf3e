"""Torch twin of reference/body/mlp.py: y = W_proj act(W_fc x), act = gelu (tanh form) or relu; or the gated
activation="swiglu" (Llama): y = W_proj (silu(W_gate x) * W_fc x)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from reference.body.mlp import GATED


def mlp(x, w_fc, w_proj, activation="gelu"):
    """proj(act(fc(x))), gelu in its tanh approximation: (B, T, D) -> (B, T, F) -> (B, T, D)."""
    h = F.linear(x, w_fc)
    h = F.gelu(h, approximate="tanh") if activation == "gelu" else F.relu(h)
    return F.linear(h, w_proj)


def swiglu(x, w_fc, w_gate, w_proj):
    """proj(silu(gate(x)) * fc(x)) (reference.ops.swiglu_forward): (B, T, D) -> (B, T, F) -> (B, T, D)."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_fc), w_proj)


class MLP(nn.Module):
    """Parameters fc.weight (F, D), gate.weight (F, D) for swiglu, proj.weight (D, F), under the block's `mlp.`
    prefix; F = cfg.ffn_width."""

    def __init__(self, cfg):
        super().__init__()
        D, F_ = cfg.d_model, cfg.ffn_width
        self.activation = cfg.activation
        self.fc = nn.Linear(D, F_, bias=False)
        self.gate = nn.Linear(D, F_, bias=False) if cfg.activation == GATED else None
        self.proj = nn.Linear(F_, D, bias=False)

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        if self.gate is not None:
            return swiglu(x, self.fc.weight, self.gate.weight, self.proj.weight)
        return mlp(x, self.fc.weight, self.proj.weight, self.activation)
