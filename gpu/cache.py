"""A key/value cache for decoding a looped model token by token (gpu.generate).

Every attention call site of the model has its own keys and values: prelude block i, core block i at loop step k
(weight-tied, but each step sees other inputs), coda block i. A new token attends to the cached keys/values of the
earlier positions at its own site, exactly what a full forward pass over the whole prefix would compute for it,
because attention is causal and a token's halting depends on its own state only. A token that halted at step N
still supplies keys/values at the steps after N (computed from its frozen state: the `live` semantics of the masked
executor), so decoding with the cache runs every step for every new token.
"""
from __future__ import annotations

import torch


class KVCache:
    """keys/values (B, H, T_cached, hd) per site name; `length` positions cached so far."""

    def __init__(self):
        self.store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0

    def site(self, name: str, positions) -> "Site":
        return Site(self, name, positions)


class Site:
    """One attention call site during one forward call over new positions (B, T_new)."""

    def __init__(self, cache: KVCache, name: str, positions):
        self.cache, self.name, self.positions = cache, name, positions

    def attention(self, attn, h, rope_cs):
        """The attention body `attn` for the new inputs h (B, T_new, D) against every cached position and
        themselves; appends the new keys/values to the cache. -> (B, T_new, D)."""
        _, k, v = attn.project(h, self.positions, rope_cs)
        if self.name in self.cache.store:
            k_old, v_old = self.cache.store[self.name]
            k, v = torch.cat([k_old, k], dim=2), torch.cat([v_old, v], dim=2)
        self.cache.store[self.name] = (k, v)
        return attn.attend(h, self.positions, k, v, rope_cs)
