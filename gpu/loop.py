"""Torch twin of reference/loop.py: one loop group, its own parameters and one step of its update.

A loop group with input e runs, for k = 1..K:
    x_k = inject(s_{k-1}, e);  r_k = F(x_k) - x_k;  s_k = s_{k-1} + m_k * gamma * r_k;  o = sum_k weights_k s_k
with m_k = 0 once a token has halted (its state frozen). *How* the steps run is the executor's business
(gpu/executors/); *who halts* is the halting rule's (gpu/halting/); this module holds the parameters and the maths
of one step, and combines the step states with the rule's weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from reference.loop import HELD_FROM

from .executors import get_executor
from .halting import get_rule


class LoopGroup(nn.Module):
    """One group of weight-tied core blocks run up to max_loops times with per-token halting. The blocks
    themselves live in the model's `core` list (so their names stay core.i.*) and are passed to forward.
    Parameters: step_scale (D,), the halting rule's unit (halt.weight, halt.bias) if it has one, inject (D, 2D)
    for the concat injection."""

    def __init__(self, cfg, executor: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.rule = get_rule(cfg.halt)
        self.run_steps = get_executor(executor)
        self.step_scale = nn.Parameter(torch.full((cfg.d_model,), cfg.step_scale_init))  # gamma (D,)
        self.halt = self.rule.make_unit(cfg)
        D = cfg.d_model
        self.inject = nn.Linear(2 * D, D, bias=False) if cfg.input_injection == "concat" else None

    def step(self, blocks, s, e, rope_cs, sites=None):
        """r = F(inject(s, e)) - inject(s, e): the un-scaled update of one loop step. (B, T, D) -> (B, T, D).
        sites: one gpu.cache.Site per block when decoding with a key/value cache."""
        x = self.inject_input(s, e)
        y = x
        for i, block in enumerate(blocks):
            y = block(y, rope_cs, None if sites is None else sites[i])
        return y - x

    def step_frozen(self, blocks, s, e, rope_cs, held, kvs, sites=None):
        """step() under halted_kv="frozen": at the blocks from reference.loop.HELD_FROM on, the positions `held` (B, T)
        supply the keys/values kvs[i] = (k, v) held from an earlier step (None: nothing held yet). -> (r (B, T, D),
        the keys/values each of those blocks used, None at the others). sites: as in step()."""
        x = self.inject_input(s, e)
        y, used = x, [None] * len(blocks)
        for i, block in enumerate(blocks):
            site = None if sites is None else sites[i]
            if i < HELD_FROM:
                y = block(y, rope_cs, site)
            else:
                y, used[i] = block.forward_held(y, rope_cs, held, kvs[i], site)
        return y - x, used

    def inject_input(self, s, e):
        """x = inject(s, e): none: s; add: s + e; concat: W_inj [s; e] (Huginn). (B, T, D) -> (B, T, D)."""
        mode = self.cfg.input_injection
        return s if mode == "none" else s + e if mode == "add" else self.inject(torch.cat([s, e], dim=-1))

    def signal(self, s, k: int):
        """The halting signal h_k (B, T) of state s after step k: the unit's, from step min_loops on; else 0."""
        if self.halt is None or k < self.cfg.min_loops:
            return torch.zeros(s.shape[:2], dtype=s.dtype, device=s.device)
        return self.halt(s)

    def forward(self, blocks, e, rope_cs, loops: int | None = None, step_sites=None, cfg=None, executor=None):
        """e: (B, T, D) -> (o (B, T, D), aux of (B, T[, K]) tensors). loops: max_loops for this call (None = cfg's).
        step_sites: step k -> one gpu.cache.Site per block, when decoding with a key/value cache.
        cfg: this call's config (LoopedTransformer.call_config: per-call min_loops, halt_penalty); None = self.cfg.
        executor: this call's executor name (gpu/executors/); None = the group's."""
        cfg = self.cfg if cfg is None else cfg
        K = cfg.max_loops if loops is None else loops
        run = self.run_steps if executor is None else get_executor(executor)
        states, signals, deltas = self.run_with(cfg, blocks, e, rope_cs, K, step_sites, run)
        res = self.rule.resolve(signals, deltas, cfg)
        o = sum(res.weights[..., k, None] * s_k for k, s_k in enumerate(states))  # (B, T, D)
        aux = dict(weights=res.weights, n_steps=res.n_steps, remainder=res.remainder, ponder_cost=res.ponder_cost,
                   kl=res.kl, halt_margin=res.margin, halt_probs=signals, deltas=deltas,
                   exit_probs=res.weights if res.exit_probs is None else res.exit_probs)
        if self.rule.expected_exit_loss:
            aux["states"] = torch.stack(states, dim=2)  # (B, T, K, D): the loss reads every exit step's logits
        return o, aux

    def run_with(self, cfg, blocks, e, rope_cs, K, step_sites, run_steps=None):
        """The executor's steps under `cfg`: the executor and `signal` read self.cfg, so a per-call config is set
        for the duration of the steps and restored after (no swap, and nothing for torch.compile to trace, when
        the call uses the group's own config). Decoding with a key/value cache (step_sites) runs
        gpu/executors/decode.py, whatever the executor: a halted token then costs (almost) nothing."""
        from .executors.decode import run_decode
        run = (run_steps or self.run_steps) if step_sites is None else run_decode
        if cfg is self.cfg:
            return run(self, blocks, e, rope_cs, K, step_sites)
        saved, self.cfg = self.cfg, cfg
        try:
            return run(self, blocks, e, rope_cs, K, step_sites)
        finally:
            self.cfg = saved
