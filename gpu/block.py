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
        return self.tail(x)

    def tail(self, x):
        """x + ffn(norm(x)), then + memory(.): the block after its attention. (N.., D) -> (N.., D)."""
        x = x + self.mlp(self.mlp_norm(x))
        return x if self.mem is None else x + self.mem(x)

    def forward_held(self, x, rope_cs, held, kv, site=None):
        """forward(x) where the positions `held` (B, T) supply the keys/values kv = (k, v) (B, Hkv, T, hd) instead of
        their own (halted_kv="frozen", reference/loop.py); kv None: every position its own. -> (y (B, T, D), the
        (k, v) used, for the next step to hold). With a KV cache site the cache stores the keys/values used, so the
        cached positions supply their held ones to the tokens decoded later."""
        B, T, _ = x.shape
        h, attn = self.attn_norm(x), HeldAttention(self.attn, held, kv)
        if site is not None:
            return self.tail(x + site.attention(attn, h, rope_cs)), attn.used
        positions = torch.arange(T, device=x.device).expand(B, T)
        _, k, v = attn.project(h, positions, rope_cs)
        return self.tail(x + attn.attend(h, positions, k, v, rope_cs)), (k, v)

    def forward_rows(self, x, rope_cs, rows, valid):
        """The block's output at the positions `rows` (B, R) only, for a compacting executor: keys and values from
        every position (the others still supply them), queries and attention output for those rows (padded per
        batch row to R), FFN and memory for the valid ones alone, packed across the batch. x: (B, T, D), valid:
        (B, R) -> (B, R, D), equal to forward(x)[b, rows[b]] where valid (0 elsewhere)."""
        B, T, _ = x.shape
        h = self.attn_norm(x)
        _, k, v = self.attn.project(h, torch.arange(T, device=x.device).expand(B, T), rope_cs)
        x_r = gather_rows(x, rows) + self.attn.attend(gather_rows(h, rows), rows, k, v, rope_cs)  # (B, R, D)
        return self.tail_rows(x_r, valid)

    def forward_rows_held(self, x_r, rope_cs, rows, valid, kv):
        """The block at the rows `rows` (B, R) only, from their inputs x_r (B, R, D), for a compacting executor under
        halted_kv="frozen": those rows' keys/values (valid ones) replace theirs in kv = (k, v) (B, Hkv, T, hd), every
        other position supplies its held ones. -> (y (B, R, D) as forward_rows, the (k, v) used, to hold)."""
        h_r = self.attn_norm(x_r)
        _, k_r, v_r = self.attn.project(h_r, rows, rope_cs)  # (B, Hkv, R, hd)
        idx = rows[:, None, :, None].expand(-1, k_r.shape[1], -1, k_r.shape[-1])
        keep = valid[:, None, :, None]  # padding rows leave their position's held keys/values as they are
        k, v = (old.scatter(2, idx, torch.where(keep, new, torch.gather(old, 2, idx)))
                for old, new in zip(kv, (k_r, v_r)))
        return self.tail_rows(x_r + self.attn.attend(h_r, rows, k, v, rope_cs), valid), (k, v)

    def tail_rows(self, x_r, valid):
        """tail() of the valid rows of x_r (B, R, D) alone, packed across the batch; 0 at the padding rows."""
        packed = self.tail(x_r[valid][None])  # (1, N_valid, D)
        return torch.zeros_like(x_r).index_put((valid,), packed[0])


class HeldAttention:
    """An attention body whose `project` gives the positions `held` (B, T) the keys/values kv = (k, v) (B, Hkv, T, hd)
    (None: their own) and keeps the ones it gave in `used`; `attend` is the body's."""

    def __init__(self, attn, held, kv):
        self.attn, self.held, self.kv, self.used = attn, held, kv, None

    def project(self, x, positions, rope_cs):
        q, k, v = self.attn.project(x, positions, rope_cs)
        if self.kv is not None:
            k, v = (torch.where(self.held[:, None, :, None], old, new) for old, new in zip(self.kv, (k, v)))
        self.used = (k, v)
        return q, k, v

    def attend(self, *args, **kwargs):
        return self.attn.attend(*args, **kwargs)


def gather_rows(t, rows):
    """t[b, rows[b]]: (B, T, D), (B, R) -> (B, R, D)."""
    return torch.gather(t, 1, rows[..., None].expand(-1, -1, t.shape[-1]))
