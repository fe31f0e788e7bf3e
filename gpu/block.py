"""Torch twin of reference/block.py: the pre-norm block x + attention(norm(x)), then + ffn(norm(.)), then in a core
block with memory + memory(.), with the bodies the config names (gpu/body/). Module names give the reference's
parameter names: attn_norm, attn, mlp_norm, mlp, mem."""
from __future__ import annotations

import torch
import torch.nn as nn

from .body import ATTENTIONS, FFNS, Memory
from .layers import Norm


class Block(nn.Module):
    """core: a looped block, which carries the memory bodies when cfg.memory != 'none'; shared: the model's global
    memory bank (memory = global | both)."""

    def __init__(self, cfg, core: bool = False, shared=None):
        super().__init__()
        self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.attn = ATTENTIONS[cfg.attention](cfg)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.mlp = FFNS[cfg.ffn](cfg)
        self.mem = Memory(cfg, shared) if core and cfg.memory != "none" else None

    def forward(self, x, rope_cs, site=None):  # (B, T, D) -> (B, T, D)
        """site: a gpu.cache.Site when decoding with a key/value cache (the new positions attend to the cached ones)."""
        h = self.attn_norm(x)
        x = x + (self.attn(h, rope_cs) if site is None else site.attention(self.attn, h, rope_cs))
        x = x + self.mlp(self.mlp_norm(x))
        return x if self.mem is None else x + self.mem(x)

    def forward_rows(self, x, rope_cs, rows, valid):
        """The block's output at the positions `rows` (B, R) only, for a compacting executor: keys and values from
        every position (the others still supply them), queries and attention output for those rows (padded per
        batch row to R), FFN and memory for the valid ones alone, packed across the batch. x: (B, T, D), valid:
        (B, R) -> (B, R, D), equal to forward(x)[b, rows[b]] where valid (0 elsewhere)."""
        B, T, _ = x.shape
        h = self.attn_norm(x)
        _, k, v = self.attn.project(h, torch.arange(T, device=x.device).expand(B, T), rope_cs)
        x_r = gather_rows(x, rows) + self.attn.attend(gather_rows(h, rows), rows, k, v, rope_cs)  # (B, R, D)
        packed = x_r[valid][None]  # (1, N_running, D)
        packed = packed + self.mlp(self.mlp_norm(packed))
        if self.mem is not None:
            packed = packed + self.mem(packed)
        return torch.zeros_like(x_r).index_put((valid,), packed[0])


def gather_rows(t, rows):
    """t[b, rows[b]]: (B, T, D), (B, R) -> (B, R, D)."""
    return torch.gather(t, 1, rows[..., None].expand(-1, -1, t.shape[-1]))
