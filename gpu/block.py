"""Torch twin of reference/block.py: the pre-norm block x + attention(norm(x)), then + ffn(norm(.)), with the
bodies the config names (gpu/body/). Module names give the reference's parameter names: attn_norm, attn, mlp_norm,
mlp."""
from __future__ import annotations

import torch.nn as nn

from .body import ATTENTIONS, FFNS
from .layers import Norm


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = Norm(cfg.d_model, cfg.norm)
        self.attn = ATTENTIONS[cfg.attention](cfg)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm)
        self.mlp = FFNS[cfg.ffn](cfg)

    def forward(self, x, rope_cs):  # (B, T, D) -> (B, T, D)
        x = x + self.attn(self.attn_norm(x), rope_cs)
        return x + self.mlp(self.mlp_norm(x))
