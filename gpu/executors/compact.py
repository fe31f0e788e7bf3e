"""The compacting executor: at each loop step only the tokens still running are computed.

Per batch row the running positions are gathered (running ones first, padded to the longest row) for their queries
and attention output, packed across the batch for the FFN and memory, and the update is scattered back; a step
where every token runs takes the plain path. Halted tokens keep their state and still supply keys and values (from
their frozen state, as in the masked executor). The numbers are the masked
executor's (tested: values, N(t), every gradient), the work on a halted token shrinks to its key/value projection.

Exact for loop groups of one block. In a group of several blocks a halted token's keys and values at the second
block still change under the `live` semantics (they depend on its attention to running tokens), so every token
must be computed there: this executor refuses such groups (the `frozen` semantics that would allow it is not built).
The MoE body's balance records assume every position; compaction refuses `ffn="moe"` for now.
"""
from __future__ import annotations

import torch

from ..block import gather_rows
from ..halting import relative_change


def check_compactable(cfg, blocks) -> None:
    if len(blocks) != 1:
        raise ValueError(f"the compact executor needs loop groups of one block (halted tokens' keys/values at a "
                         f"second block still change); this group has {len(blocks)}: use loop_scope='layer', "
                         f"n_layer=1, or executor='masked'")
    if any(hasattr(m, "records") for m in blocks[0].modules()):
        raise ValueError(f"the compact executor does not support ffn={cfg.ffn!r} (its balance term reads every "
                         f"position): use executor='masked'")


def running_rows(running):
    """(rows (B, R), valid (B, R)): each row's running positions first, in order, padded with halted ones up to
    R = the most running positions of any row."""
    order = torch.argsort((~running).to(torch.int8), dim=1, stable=True)  # (B, T): running first
    counts = running.sum(dim=1)
    R = int(counts.max())
    rows = order[:, :R]
    return rows, torch.arange(R, device=running.device)[None, :] < counts[:, None]


def run_compact(group, blocks, e, rope_cs, K: int, step_sites=None):
    """Same contract as gpu.executors.masked.run_masked; decoding with a KV cache uses the masked executor."""
    if step_sites is not None:
        raise ValueError("decoding with a key/value cache runs every step for every token: use executor='masked'")
    cfg, rule = group.cfg, group.rule
    check_compactable(cfg, blocks)
    B, T, D = e.shape
    s = e
    running = torch.ones(B, T, dtype=torch.bool, device=e.device)
    state = rule.start(torch.zeros(B, T, dtype=e.dtype, device=e.device))
    states, signals, deltas = [], [], []
    constant_steps = max(0, K - cfg.backprop_loops) if cfg.backprop_loops else 0
    for k in range(1, K + 1):
        if not bool(running.any()):
            s_new = s
        elif bool(running.all()):  # nothing to skip: the plain step (the masked executor's numbers, no gathering)
            s_new = s + group.step_scale * group.step(blocks, s, e, rope_cs)
        else:
            rows, valid = running_rows(running)
            x = group.inject_input(s, e)  # (B, T, D): every token's block input (halted ones supply keys/values)
            y_rows = blocks[0].forward_rows(x, rope_cs, rows, valid)  # (B, R, D), 0 at padding
            r_rows = (y_rows - gather_rows(x, rows)) * valid[..., None].to(x.dtype)
            update = torch.zeros_like(s).scatter(1, rows[..., None].expand(-1, -1, D), r_rows)
            s_new = s + group.step_scale * update
        if k <= constant_steps:
            s_new = s_new.detach()
        delta = relative_change(s_new, s)
        s = s_new
        sig = group.signal(s, k)
        state, halted = rule.decide(state, k, sig, delta, cfg)
        running = running & ~halted
        states.append(s)
        signals.append(sig)
        deltas.append(delta)
    return states, torch.stack(signals, dim=-1), torch.stack(deltas, dim=-1)
