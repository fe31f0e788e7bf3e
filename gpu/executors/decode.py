"""The decoding executor: the loop steps of new tokens against a key/value cache (gpu/cache.py), where a token that
halted early costs (almost) nothing. gpu/loop.py runs it whenever the model decodes with a cache.

The numbers are those of recomputing the window without a cache (the masked executor's, tested). A token whose
online decision halted it after step N keeps s_N; what it must still supply are its keys/values at the later steps:
- one-block loop groups: at every step k > N its key/value are the projection of inject(s_N, e), the same at every
  such step; so at step N+1 only that projection runs for it (no attention, no FFN), and later steps append copies;
- several blocks, cfg.halted_kv = "frozen": at step k, block b it supplies the keys/values of step min(k, N+1); so
  step N+1 runs in full for it (its state update discarded, m = 0) and later steps append copies of those;
- several blocks, "live" (the default): its keys/values at block b > 1 change at every step (they read the others'
  attention), so every step runs for every token: the masked executor.
Per step, only the batch rows with a token that needs the blocks are computed (gathered, and scattered back); a
step where no new token needs them runs no block at all. The MoE body records every row (its balance term), so with
it a step computes all rows or none.
"""
from __future__ import annotations

import numpy as np
import torch

from .masked import finish_step, outputs, loop_start, run_masked


def _keep(held, rows, mask, new, B):
    """held (B, H, T, hd) or None with new (R, H, T, hd) written where mask (R, T), in batch rows `rows` (None = all)."""
    if held is None:
        held = new.new_zeros((B,) + new.shape[1:])
    cur = held if rows is None else held[rows]
    out = torch.where(mask[:, None, :, None], new, cur)
    return out if rows is None else held.index_copy(0, rows, out)


def _index(flags, device):
    """(B,) numpy bool -> None when every row, else their indices (R,) on `device`."""
    return None if flags.all() else torch.from_numpy(np.flatnonzero(flags)).to(device)


def _pick(rows):
    return (lambda t: t) if rows is None else (lambda t: t[rows])


def run_decode(group, blocks, e, rope_cs, K: int, step_sites):
    """Same contract as gpu.executors.masked.run_masked with step_sites: e (B, T_new, D) the new tokens' group input;
    step k -> one gpu.cache.Site per block. Returns (states: K tensors (B, T, D), signals (B, T, K), deltas)."""
    cfg = group.cfg
    if len(blocks) > 1 and getattr(cfg, "halted_kv", "live") != "frozen":
        return run_masked(group, blocks, e, rope_cs, K, step_sites)  # live: every step for every token
    one = len(blocks) == 1
    whole = any(hasattr(b.mlp, "records") for b in blocks)  # the MoE body: all rows or none
    B, T, _ = e.shape
    s, running, _, _, state, constant_steps = loop_start(group, blocks, e, K)
    run_h, fresh_h = np.ones((B, T), dtype=bool), np.zeros((B, T), dtype=bool)  # host copies: one sync a step
    held = [[None, None] for _ in blocks]  # per block: keys, values (B, Hkv, T, hd) of step N + 1
    trace = []  # (s_k, signal, delta) per step
    for k in range(1, K + 1):
        sites = step_sites(k)
        if run_h.all():  # nothing halted: the masked executor's step
            s_new = s + group.step_scale * group.step(blocks, s, e, rope_cs, sites)
        else:
            s_new = _step(group, blocks, s, e, rope_cs, sites, held, running, run_h, fresh_h, one, whole)
        s, sig, delta, state, halted = finish_step(group, k, s, s_new, state, constant_steps)
        halted_h = halted.cpu().numpy()
        fresh_h = run_h & halted_h
        run_h = run_h & ~halted_h
        running = running & ~halted
        trace.append((s, sig, delta))
    return outputs(trace)


def _step(group, blocks, s, e, rope_cs, sites, held, running, run_h, fresh_h, one, whole):
    """One step once some new token has halted: the blocks on the rows that need them, held copies elsewhere;
    updates `held` in place. -> s_new (B, T, D)."""
    B, dev = s.shape[0], s.device
    need_h = run_h if one else run_h | fresh_h  # (B, T): whose block outputs this step needs
    comp_h = need_h.any(axis=1)  # (B,) rows computed in full
    if whole and comp_h.any():
        comp_h[:] = True
    stale = torch.from_numpy(~run_h & ~fresh_h).to(dev)  # (B, T): halted before step k - 1, held k/v exist
    fresh = torch.from_numpy(fresh_h).to(dev)
    s_new = s
    if comp_h.any():
        rows = _index(comp_h, dev)
        pick = _pick(rows)
        hold_mask = pick(stale)
        any_stale = bool((~run_h & ~fresh_h)[comp_h].any())
        row_sites = [site.subset(rows, (hold_mask, pick(hk), pick(hv)) if any_stale else None)
                     for site, (hk, hv) in zip(sites, held)]
        x = group.inject_input(pick(s), pick(e))  # (R, T, D)
        y = x
        for block, site in zip(blocks, row_sites):
            y = block(y, rope_cs, site)
        update = pick(running)[..., None].to(s.dtype) * group.step_scale * (y - x)  # m_k gamma r_k
        s_new = s + update if rows is None else s.index_add(0, rows, update)
        if fresh_h[comp_h].any():
            f = pick(fresh)
            for hb, site in zip(held, row_sites):
                hb[0], hb[1] = (_keep(hb[j], rows, f, site.new[j], B) for j in range(2))
    rest_h = ~comp_h  # rows whose blocks did not run: every token has halted
    if rest_h.any():
        rows = _index(rest_h, dev)
        proj_h = fresh_h & rest_h[:, None]  # one-block groups: N = k - 1 and nothing else to run in the row
        if proj_h.any():
            p_rows = _index(proj_h.any(axis=1), dev)
            pick = _pick(p_rows)
            h = blocks[0].attn_norm(group.inject_input(pick(s), pick(e)))
            kv = sites[0].subset(p_rows).project(blocks[0].attn, h, rope_cs)  # the projection only
            held[0][:] = [_keep(held[0][j], p_rows, pick(fresh), kv[j], B) for j in range(2)]
        pick = _pick(rows)
        for site, (hk, hv) in zip(sites, held):
            site.subset(rows).put(pick(hk), pick(hv))  # copies of the held keys/values
    return s_new
