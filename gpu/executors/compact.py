"""The compacting executor: at each loop step only the tokens that must be computed are.

Per batch row the computed positions are gathered (first, in order, padded to a bucketed row count R, see
`bucket_rows`) for their queries and attention output, packed across the batch for the FFN and memory, and the
update is scattered back; a step where every token is computed takes the plain path. The numbers are the masked
executor's (tested: values, N(t), every gradient); the work on a halted token shrinks to its key/value projection at
the first block of the group, and to nothing at the others.

Which tokens a step k computes, and where halted tokens' keys/values come from (reference/loop.py, cfg.halted_kv):
- groups of one block: the running tokens; halted ones supply keys/values from their frozen state (both semantics).
- several blocks, "frozen": the running tokens and those that halted right after step k - 1 (their step N + 1 gives
  the keys/values they hold from then on; its state update is discarded); every other halted token supplies, at
  the blocks after the first, the keys/values it holds (the masked executor's, handed from step to step).
- several blocks, "live": a halted token's keys/values at the second block depend on its attention to running
  tokens at every step, so every token must be computed: this executor refuses (use "frozen" or the masked one).
The MoE body's balance records assume every position; compaction refuses `ffn="moe"` for now.
"""
from __future__ import annotations

import torch

from ..block import gather_rows
from .masked import finish_step, outputs, frozen_group, hold, loop_start


def why_not_compactable(cfg, blocks) -> str | None:
    """Why this executor cannot run a loop group of these blocks (a message naming the fix), or None."""
    if len(blocks) != 1 and not frozen_group(cfg, blocks):
        return (f"the compact executor needs loop groups of one block under halted_kv={cfg.halted_kv!r} (a halted "
                f"token's keys/values at a second block still change); this group has {len(blocks)}: set "
                f"halted_kv='frozen' (halted tokens hold their keys/values), use loop_scope='layer' or n_layer=1, or "
                f"executor='masked'")
    if any(hasattr(m, "records") for b in blocks for m in b.modules()):
        return (f"the compact executor does not support ffn={cfg.ffn!r} (its balance term reads every position): use "
                f"executor='masked'")
    return None


def check_compactable(cfg, blocks) -> None:
    why = why_not_compactable(cfg, blocks)
    if why:
        raise ValueError(why)


def bucket_rows(n: int, T: int) -> int:
    """n gathered rows rounded up to a multiple of ceil(T / 8), at most T: at most 8 distinct row counts per sequence
    length T, so a compiled step sees few shapes; the extra rows are padding, masked like any other."""
    q = -(-T // 8)
    return min(T, -(-n // q) * q)


def running_rows(running):
    """(rows (B, R), valid (B, R)): each row's running (computed) positions first, in order, padded with the others
    up to R = bucket_rows(the most running positions of any row, T)."""
    order = torch.argsort((~running).to(torch.int8), dim=1, stable=True)  # (B, T): running first
    counts = running.sum(dim=1)
    R = bucket_rows(int(counts.max()), running.shape[1])
    rows = order[:, :R]
    return rows, torch.arange(R, device=running.device)[None, :] < counts[:, None]


def run_compact(group, blocks, e, rope_cs, K: int, step_sites=None):
    """Same contract as gpu.executors.masked.run_masked; decoding with a KV cache runs gpu/executors/decode.py."""
    if step_sites is not None:
        raise ValueError("decoding with a key/value cache is gpu/executors/decode.py's work "
                         "(LoopGroup.run_with sends it there)")
    cfg = group.cfg
    check_compactable(cfg, blocks)
    frozen = frozen_group(cfg, blocks)
    B, T, D = e.shape
    s, running, exit_step, kvs, state, constant_steps = loop_start(group, blocks, e, K)
    trace = []  # (s_k, signal, delta) per step
    for k in range(1, K + 1):
        computed = running | (exit_step == k - 1) if frozen else running  # (B, T)
        if not bool(running.any()):
            s_new = s
        elif bool(running.all()):  # nothing to skip: the plain step (the masked executor's numbers, no gathering)
            s_new = s + group.step_scale * group.step(blocks, s, e, rope_cs)
        elif bool(computed.all()):  # frozen, nothing held yet: the masked executor's step
            r, kvs = group.step_frozen(blocks, s, e, rope_cs, exit_step < k - 1, kvs)
            kvs = hold(kvs, k <= constant_steps)
            s_new = s + running[..., None].to(e.dtype) * group.step_scale * r
        else:
            rows, valid = running_rows(computed)
            x = group.inject_input(s, e)  # (B, T, D): every token's block input (halted ones supply keys/values)
            y_rows = blocks[0].forward_rows(x, rope_cs, rows, valid)  # (B, R, D), 0 at padding
            for i in range(1, len(blocks)):  # frozen only: the rows' keys/values join the held ones
                y_rows, kvs[i] = blocks[i].forward_rows_held(y_rows, rope_cs, rows, valid, kvs[i])
            kvs = hold(kvs, k <= constant_steps)
            update_rows = valid & torch.gather(running, 1, rows)  # a token computed for its keys/values only: no update
            r_rows = (y_rows - gather_rows(x, rows)) * update_rows[..., None].to(x.dtype)
            update = torch.zeros_like(s).scatter(1, rows[..., None].expand(-1, -1, D), r_rows)
            s_new = s + group.step_scale * update
        s, sig, delta, state, halted = finish_step(group, k, s, s_new, state, constant_steps)
        exit_step = torch.where(running & halted, k, exit_step)
        running = running & ~halted
        trace.append((s, sig, delta))
    return outputs(trace)
