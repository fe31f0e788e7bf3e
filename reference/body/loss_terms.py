"""Terms a block body adds to the loss (the MoE balance regulariser), and the margins of a body's threshold decisions.

A body that adds a term says so with three functions (reference/body/moe.py is the one today):
    loss_term(cfg) -> (key, coefficient)    like a halting rule's loss_weights; key names the loss part
    record(cache) -> Record                 what one call contributes: a per-token statistic u (B, T, S) and
                                            the margin (B, T) of its threshold decision (None if it has none)
    term(u_bar) -> (B,),  term_backward(u_bar) -> d term / d u_bar (B, S)
A body runs once per call of its block: once in the prelude and coda, once per loop step in the core. The model
gathers every call c of body j with the mask m_c (B, T) of the token-steps that call really processed (1 in the
prelude and coda; 1 while the token runs at that loop step, so a halted token no longer counts), and computes
    u_bar[j, b] = sum_{c, t} m_c[b, t] u_c[b, t] / sum_{c, t} m_c[b, t]    per sequence b, over positions and steps
    value[key]  = mean over the bodies j with that key and the sequences b of term(u_bar[j, b])
    loss       += coefficient * value[key]
The torch twin (gpu/body/loss_terms.py) computes the same from the recorded calls and the realized depths N
(a token runs at step k iff k <= N), so skipped, masked and compiled steps all count alike. Under truncated
backprop (backprop_loops) the early steps count in the value but pass no gradient, like the rest of those steps.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ops import xp_of


@dataclass
class Record:
    """One body call's contribution: stat (B, T, S); margin (B, T) or None; dstat (B, T, S), set by `backward`
    before the model's backward pass reaches the call (None: no gradient reaches it)."""
    stat: object
    margin: object = None
    dstat: object = None


def forward(calls, cfg):
    """calls: (prefix, body, record, mask (B, T) or None) for every call of a recording body, in any order.
    Returns ({key: coefficient * value}, route margin (B, T) or None, cache for `backward`)."""
    bodies = {}
    for prefix, body, rec, mask in calls:
        bodies.setdefault(prefix, (body, []))[1].append((rec, mask))
    per_key, margins, cache = {}, [], []
    for prefix, (body, recs) in bodies.items():
        xp = xp_of(recs[0][0].stat)
        num, count = 0.0, 0.0
        for rec, mask in recs:
            m = xp.ones(rec.stat.shape[:2], dtype=rec.stat.dtype) if mask is None else mask  # (B, T)
            num = num + xp.einsum("bt,bts->bs", m, rec.stat)
            count = count + xp.sum(m, axis=1)[:, None]  # (B, 1), >= T: every token runs the first step
            if rec.margin is not None:
                margins.append(rec.margin)
        u_bar = num / count  # (B, S)
        key, coef = body.loss_term(cfg)
        per_key.setdefault(key, []).append(coef * xp.mean(body.term(u_bar)))
        cache.append((body, recs, u_bar, count))
    values = {key: sum(vs) / len(vs) for key, vs in per_key.items()}
    margin = None
    for mg in margins:
        margin = mg if margin is None else xp_of(mg).minimum(margin, mg)
    return values, margin, (cache, {key: len(vs) for key, vs in per_key.items()}, cfg)


def backward(cache) -> None:
    """Set each recorded call's dstat = d loss / d stat (the loss carries coefficient * value[key])."""
    bodies, n_bodies, cfg = cache
    for body, recs, u_bar, count in bodies:
        B = u_bar.shape[0]
        key, coef = body.loss_term(cfg)
        dterm = coef / (n_bodies[key] * B)  # d loss / d term(u_bar[b])
        du_bar = body.term_backward(u_bar) * dterm / count  # (B, S), divided by the count of the mean
        for rec, mask in recs:
            m = 1.0 if mask is None else mask[..., None]
            rec.dstat = m * du_bar[:, None, :]  # (B, T, S)
