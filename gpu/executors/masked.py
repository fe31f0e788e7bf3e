"""The masked executor: every token is computed at every step, and a halted token's update is masked to zero.

Simple, compile-friendly (fixed shapes), and the semantics of the reference loop (reference/loop.py) exactly:
    s_k = s_{k-1} + m_k * gamma * r_k,   m_k = 1 while the token runs, 0 once it has halted.
It spends max-depth compute on every token; a compacting executor (running tokens only) is its sibling, tested
equal to it. Eager runs stop early once every token has halted (an adaptive rule only): that check is a host sync,
so under torch.compile every step runs, and a fully halted step is an exact no-op (m = 0).
"""
from __future__ import annotations

import torch

from ..halting import relative_change


def run_masked(group, blocks, e, rope_cs, K: int, step_sites=None):
    """Run loop group `group` (gpu/loop.py LoopGroup) on its input e (B, T, D) for up to K steps.
    step_sites: k -> one gpu.cache.Site per block when decoding with a key/value cache; then every step runs (a
    halted token still supplies its keys/values to later tokens at the later steps).
    Returns (states: K tensors (B, T, D), signals (B, T, K), deltas (B, T, K))."""
    cfg, rule = group.cfg, group.rule
    early_exit = rule.adaptive and step_sites is None and not torch.compiler.is_compiling()
    B, T, _ = e.shape
    s = e
    running = torch.ones(B, T, dtype=torch.bool, device=e.device)
    state = rule.start(torch.zeros(B, T, dtype=e.dtype, device=e.device))
    states, signals, deltas = [], [], []
    constant_steps = max(0, K - cfg.backprop_loops) if cfg.backprop_loops else 0  # truncated backprop (Huginn)
    for k in range(1, K + 1):
        if early_exit and not bool(running.any()):
            s_new = s  # every token has halted: the remaining steps are no-ops
        else:
            mask = running[..., None].to(e.dtype)  # (B, T, 1)
            sites = None if step_sites is None else step_sites(k)
            s_new = s + mask * group.step_scale * group.step(blocks, s, e, rope_cs, sites)
        if k <= constant_steps:
            s_new = s_new.detach()  # s_1 .. s_{K-b} are constants for the gradient; e still reaches the last b steps
        delta = relative_change(s_new, s)  # (B, T)
        s = s_new
        sig = group.signal(s, k)  # (B, T)
        state, halted = rule.decide(state, k, sig, delta, cfg)  # the online decision; resolve recomputes N
        running = running & ~halted
        states.append(s)
        signals.append(sig)
        deltas.append(delta)
    return states, torch.stack(signals, dim=-1), torch.stack(deltas, dim=-1)
