"""Torch twin of reference/body/mlp.py: y = W_proj act(W_fc x), act = gelu (tanh form) or relu."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def mlp(x, w_fc, w_proj, activation="gelu"):
    """proj(act(fc(x))), gelu in its tanh approximation: (B, T, D) -> (B, T, F) -> (B, T, D)."""
    h = F.linear(x, w_fc)
    h = F.gelu(h, approximate="tanh") if activation == "gelu" else F.relu(h)
    return F.linear(h, w_proj)


class MLP(nn.Module):
    """Parameters fc.weight (F, D), proj.weight (D, F), under the block's `mlp.` prefix."""

    def __init__(self, cfg):
        super().__init__()
        self.activation = cfg.activation
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        return mlp(x, self.fc.weight, self.proj.weight, self.activation)
