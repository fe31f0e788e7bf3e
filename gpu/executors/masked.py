"""The masked executor: every token is computed at every step, and a halted token's update is masked to zero.

Simple, compile-friendly (fixed shapes), and the semantics of the reference loop (reference/loop.py) exactly:
    s_k = s_{k-1} + m_k * gamma * r_k,   m_k = 1 while the token runs, 0 once it has halted.
It spends max-depth compute on every token; a compacting executor (running tokens only) is its sibling, tested
equal to it. Eager runs stop early once every token has halted (an adaptive rule only): that check is a host sync,
so under torch.compile every step runs, and a fully halted step is an exact no-op (m = 0).
Under halted_kv="frozen" (groups of several blocks) a token of depth N supplies, at step k > N + 1 and the blocks
after the first, the keys/values it used at step N + 1: each step hands the keys/values it used to the next
(LoopGroup.step_frozen), so the held ones carry the gradient of every step that reads them back to step N + 1.
Decoding with a key/value cache stores the keys/values used, so a cached token supplies its held ones later on.
"""
from __future__ import annotations

import torch

from reference.loop import HELD_FROM

from ..halting import relative_change


def frozen_group(cfg, blocks) -> bool:
    """Whether halted tokens hold keys/values in this group: halted_kv="frozen" and more than one block."""
    return cfg.halted_kv == "frozen" and len(blocks) > HELD_FROM


def hold(kvs, constant: bool):
    """The keys/values a step hands on; detached when the step is a constant of truncated backprop."""
    return [kv if kv is None or not constant else (kv[0].detach(), kv[1].detach()) for kv in kvs]


def loop_start(group, blocks, e, K: int):
    """What every executor starts a loop group from: (s = e, running (B, T) all True, exit_step (B, T) = K + 1 (N of
    the tokens halted so far), kvs (frozen: the keys/values each block used at the last step), the rule's state,
    the number of leading steps that truncated backprop treats as constants (Huginn))."""
    B, T, _ = e.shape
    running = torch.ones(B, T, dtype=torch.bool, device=e.device)
    exit_step = torch.full((B, T), K + 1, device=e.device)
    state = group.rule.start(torch.zeros(B, T, dtype=e.dtype, device=e.device))
    cfg = group.cfg
    constant_steps = max(0, K - cfg.backprop_loops) if cfg.backprop_loops else 0
    return e, running, exit_step, [None] * len(blocks), state, constant_steps


def finish_step(group, k: int, s, s_new, state, constant_steps: int):
    """The end of loop step k in every executor: truncated backprop (s_1 .. s_{K-b} are constants for the gradient; e
    still reaches the last b steps), the relative change, the halting signal h_k and the rule's online decision
    (resolve recomputes N). -> (s_k, signal (B, T), delta (B, T), state, halted (B, T))."""
    if k <= constant_steps:
        s_new = s_new.detach()
    delta = relative_change(s_new, s)  # (B, T)
    sig = group.signal(s_new, k)  # (B, T)
    state, halted = group.rule.decide(state, k, sig, delta, group.cfg)
    return s_new, sig, delta, state, halted


def outputs(trace):
    """[(s_k, signal, delta) per step] -> (states: K tensors (B, T, D), signals (B, T, K), deltas (B, T, K))."""
    states, signals, deltas = zip(*trace)
    return list(states), torch.stack(signals, dim=-1), torch.stack(deltas, dim=-1)


def run_masked(group, blocks, e, rope_cs, K: int, step_sites=None):
    """Run loop group `group` (gpu/loop.py LoopGroup) on its input e (B, T, D) for up to K steps.
    step_sites: k -> one gpu.cache.Site per block when decoding with a key/value cache; then every step runs (a
    halted token still supplies its keys/values to later tokens at the later steps).
    Returns (states: K tensors (B, T, D), signals (B, T, K), deltas (B, T, K))."""
    cfg, rule = group.cfg, group.rule
    compiling = torch.compiler.is_compiling()
    early_exit = rule.adaptive and step_sites is None and not compiling
    frozen = frozen_group(cfg, blocks)
    s, running, exit_step, kvs, state, constant_steps = loop_start(group, blocks, e, K)
    trace = []  # (s_k, signal, delta) per step
    for k in range(1, K + 1):
        if early_exit and not bool(running.any()):
            s_new = s  # every token has halted: the remaining steps are no-ops
        else:
            mask = running[..., None].to(e.dtype)  # (B, T, 1)
            sites = None if step_sites is None else step_sites(k)
            if frozen and (compiling or not bool(running.all())):
                r, kvs = group.step_frozen(blocks, s, e, rope_cs, exit_step < k - 1, kvs, sites)  # held: N + 1 < k
                kvs = hold(kvs, k <= constant_steps)
            else:  # every token runs: nothing is held yet, nor will be at the next step
                r = group.step(blocks, s, e, rope_cs, sites)
            s_new = s + mask * group.step_scale * r
        s, sig, delta, state, halted = finish_step(group, k, s, s_new, state, constant_steps)
        exit_step = torch.where(running & halted, k, exit_step)
        running = running & ~halted
        trace.append((s, sig, delta))
    return outputs(trace)
