"""A key/value cache for decoding a looped model token by token (gpu.generate).

Every attention call site of the model has its own keys and values: prelude block i, core block i at loop step k
(weight-tied, but each step sees other inputs), coda block i. A new token attends to the cached keys/values of the
earlier positions at its own site, exactly what a full forward pass over the whole prefix would compute for it,
because attention is causal and a token's halting depends on its own state only. A token that halted at step N
still supplies keys/values at the steps after N: gpu/executors/decode.py appends them (held copies where the
semantics allow, gpu/loop.py dispatches decoding there).

Left padding (batched prompts of different lengths): `KVCache(pad=...)` (B,) left pads per row. Row b's positions
start at 0 at its first real token (RoPE), and no real query reads a padded key; a padded query reads the padded
keys and itself (its output is never used, but must stay finite).
The keys/values live in buffers grown by doubling, so appending a token costs O(1) copies, not O(T).
"""
from __future__ import annotations

import torch


class KVCache:
    """keys/values (B, Hkv, capacity, hd) per site name, the first `length` positions filled.
    pad: (B,) int tensor of left pads per row, or None. capacity: positions to allocate at first (grows if needed)."""

    def __init__(self, pad=None, capacity: int = 64):
        self.store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0
        self.pad = pad
        self.capacity = capacity
        self._layout = (None, None)

    def site(self, name: str, positions) -> "Site":
        return Site(self, name, positions)

    def layout(self, positions):
        """(query positions (B, T) per row, key positions (B, L) or None, key mask (B, T, L) or None) for a call over
        columns `positions` (B, T); L = the columns cached after the call. Computed once per call."""
        if self._layout[0] is positions:
            return self._layout[1]
        if self.pad is None:
            out = positions, None, None
        else:
            pad = self.pad.to(positions.device)[:, None]
            cols = torch.arange(int(positions[0, -1]) + 1, device=positions.device)[None]  # (1, L)
            key_real = cols >= pad  # (B, L)
            q_pad = positions < pad  # (B, T)
            out = ((positions - pad).clamp(min=0), (cols - pad).clamp(min=0),
                   key_real[:, None, :] | q_pad[:, :, None])
        self._layout = (positions, out)
        return out

    def append(self, name: str, k, v, rows=None, read: bool = True):
        """Write the new keys/values k, v (R, Hkv, T, hd) at columns length..length+T-1 of batch rows `rows` (R,)
        (None = every row) -> those rows' keys/values so far (R, Hkv, length + T, hd), or None if not `read`."""
        B, T = self.batch, k.shape[2]
        end = self.length + T
        if name not in self.store or self.store[name][0].shape[2] < end:
            cap = max(end, self.capacity, 2 * self.store[name][0].shape[2] if name in self.store else 0)
            bufs = tuple(t.new_zeros(B, t.shape[1], cap, t.shape[3]) for t in (k, v))
            if name in self.store:
                for new, old in zip(bufs, self.store[name]):
                    new[:, :, :self.length] = old[:, :, :self.length]
            self.store[name] = bufs
        kb, vb = self.store[name]
        if rows is None:
            kb[:, :, self.length:end], vb[:, :, self.length:end] = k, v
            return kb[:, :, :end], vb[:, :, :end]
        kb[rows, :, self.length:end], vb[rows, :, self.length:end] = k, v
        return (kb[rows, :, :end], vb[rows, :, :end]) if read else None


class Site:
    """One attention call site during one forward call over new positions (B, T_new). rows: the batch rows this
    call computes (None = all); hold: (mask (R, T_new), k, v) keys/values that replace the new ones where mask."""

    def __init__(self, cache: KVCache, name: str, positions, rows=None, hold=None):
        self.cache, self.name, self.positions, self.rows, self.hold = cache, name, positions, rows, hold
        cache.batch = positions.shape[0]
        self.new = None  # (k, v) (R, Hkv, T_new, hd) appended by the last attention call

    def subset(self, rows, hold=None) -> "Site":
        """This site for the batch rows `rows` (R,) only (None = all), with held keys/values `hold`."""
        return Site(self.cache, self.name, self.positions, rows, hold)

    def _layout(self):
        pos, kpos, kmask = self.cache.layout(self.positions)
        if self.rows is None:
            return pos, kpos, kmask
        return pos[self.rows], None if kpos is None else kpos[self.rows], None if kmask is None else kmask[self.rows]

    def attention(self, attn, h, rope_cs):
        """The attention body `attn` for the new inputs h (R, T_new, D) against every cached position and
        themselves; appends the new keys/values to the cache. -> (R, T_new, D)."""
        pos, kpos, kmask = self._layout()
        q, k, v = attn.project(h, pos, rope_cs)
        if self.hold is not None:
            mask, hk, hv = self.hold
            k, v = torch.where(mask[:, None, :, None], hk, k), torch.where(mask[:, None, :, None], hv, v)
        self.new = (k, v)
        k_all, v_all = self.cache.append(self.name, k, v, self.rows)
        return attn.attend(h, pos, k_all, v_all, rope_cs, kpos, kmask, q=q)

    def project(self, attn, h, rope_cs):
        """Keys/values of h (R, T_new, D) at this call's positions, not appended. -> (k, v) (R, Hkv, T_new, hd)."""
        return attn.project(h, self._layout()[0], rope_cs)[1:]

    def put(self, k, v):
        """Append keys/values computed elsewhere (held copies) for this site's rows."""
        self.cache.append(self.name, k, v, self.rows, read=False)
