"""Torch twin of reference/block.py: the pre-norm block x + attention(norm(x)), then + ffn(norm(.)), then in a core
block with memory + memory(.), with the bodies the config names (gpu/body/). Module names give the reference's
parameter names: attn_norm, attn, mlp_norm, mlp, mem."""
from __future__ import annotations

import torch.nn as nn

from .body import ATTENTIONS, FFNS, Memory
from .layers import Norm


class Block(nn.Module):
    """core: a looped block, which carries the memory bodies when cfg.memory != 'none'; shared: the model's global
    memory bank (memory = global | both)."""

    def __init__(self, cfg, core: bool = False, shared=None):
        super().__init__()
        self.attn_norm = Norm(cfg.d_model, cfg.norm)
        self.attn = ATTENTIONS[cfg.attention](cfg)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm)
        self.mlp = FFNS[cfg.ffn](cfg)
        self.mem = Memory(cfg, shared) if core and cfg.memory != "none" else None

    def forward(self, x, rope_cs, site=None):  # (B, T, D) -> (B, T, D)
        """site: a gpu.cache.Site when decoding with a key/value cache (the new positions attend to the cached ones)."""
        h = self.attn_norm(x)
        x = x + (self.attn(h, rope_cs) if site is None else site.attention(self.attn, h, rope_cs))
        x = x + self.mlp(self.mlp_norm(x))
        return x if self.mem is None else x + self.mem(x)
