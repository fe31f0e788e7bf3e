"""Torch twin of reference/body/loss_terms.py: the bodies' loss terms and their top-k margins, from recorded calls.

While the model runs its forward pass, each body with a `records` list (the MoE) appends (statistic (B, T, S),
margin (B, T)) per call. `finish` weighs each call by the token-steps it really processed, as the reference does:
prelude and coda calls count every token; the k-th call of a core block (loop step k of its group g) counts the
tokens with k <= N_g, the realized depth, so a step skipped, masked or run by torch.compile after every token halted
counts alike. Under truncated backprop the steps k <= K - backprop_loops add to the value but pass no gradient.
"""
from __future__ import annotations

import math

import torch


def _recorders(blocks):
    return [m for block in blocks for m in block.modules() if hasattr(m, "records")]


def start(model) -> None:
    """Every recording body of the model starts an empty list of calls."""
    for m in _recorders([*model.prelude, *model.core, *model.coda]):
        m.records = []


def finish(model, n_steps, K: int):
    """Stop recording; n_steps (B, T, G), K the loop count of this call -> ({key: coefficient * value}, route
    margin (B, T), inf where no body made a top-k decision)."""
    cfg = model.cfg
    group_of = {i: g for g in range(cfg.n_groups) for i in cfg.group_blocks(g)}
    frozen = K - cfg.backprop_loops if cfg.backprop_loops else 0  # steps 1..frozen pass no gradient
    B, T = n_steps.shape[:2]
    margin = torch.full((B, T), math.inf, dtype=model.embed.weight.dtype, device=n_steps.device)
    values = {}
    for where, blocks in (("edge", model.prelude), ("core", model.core), ("edge", model.coda)):
        for i, block in enumerate(blocks):
            for body in _recorders([block]):
                calls, body.records = body.records, None
                if not calls:  # a body this forward pass did not reach
                    continue
                num, count = 0.0, 0.0
                for k, (stat, mg) in enumerate(calls, start=1):
                    if where == "core":
                        N = n_steps[..., group_of[i]]
                        if k > int(N.max()):  # the reference skips a step once every token has halted
                            continue
                        m, stat = (k <= N).to(stat.dtype), stat.detach() if k <= frozen else stat
                    else:
                        m = torch.ones(B, T, dtype=stat.dtype, device=stat.device)
                    num = num + torch.einsum("bt,bts->bs", m, stat)
                    count = count + m.sum(1, keepdim=True)
                    margin = torch.minimum(margin, mg.to(margin.dtype))
                key, coef = body.loss_term(cfg)
                values.setdefault(key, []).append(coef * body.term(num / count).mean())
    return {key: sum(vs) / len(vs) for key, vs in values.items()}, margin
