"""`ffn="moe"`: sigma-MoE (Csordas et al. 2023), the feed-forward body of MoEUT (arXiv 2405.16039).

    z = W_sel x  (E scores),   y = sum_{e in topk(z, k)} sigmoid(z_e) * W_proj[e] act(W_fc[e] x)
Each of the E = n_experts experts is a two-layer MLP of hidden width moe_expert_size; a token uses the k = moe_top_k
experts of highest score, each weighted by its sigmoid score with no renormalisation over the k (MoEUT's SigmaMoE:
sigmoid, topk, weighted sum). The top-k set is a threshold decision: `margin` = z_(k) - z_(k+1), the gap between the
k-th and (k+1)-th score (inf when k = E), is what a perturbation must exceed to change it (tests exclude draws under
a stated margin, as for halting).
Balance regulariser (MoEUT's entropy_reg, moeut.py): with p = softmax(z) over the experts and p_bar its mean over a
sequence's positions and loop steps (reference/body/loss_terms.py), the loss adds
    moe_balance * mean_{blocks, sequences} KL(p_bar || uniform) = moe_balance * mean (log E - H(p_bar)),
MoEUT's -H(p_bar) up to the constant log E (same gradient, and 0 at perfect balance). MoEUT sums over its layers
and weights by 0.01; we average over the MoE blocks, so moe_balance does not scale with depth.
Departures from MoEUT: its experts read the un-normalised residual and only the selection its norm ("peri-layernorm");
here both read the block's pre-norm input, like the MLP. Init follows this project's convention (below), not MoEUT's
fan-in scaled one.
Parameters under PREFIX (= "<block>.mlp"): sel.weight (E, D), fc.weight (E, Fe, D), proj.weight (E, D, Fe).
The reference computes every expert on every token and zeroes the unselected weights (readable); the torch twin
computes only the selected ones.
"""
from __future__ import annotations

import math

from .. import ops
from ..params import add_grad, normal, residual_std
from .loss_terms import Record


def expert_size(cfg) -> int:
    """Hidden width of one expert: moe_expert_size, or by default the MLP's width // k (the MLP's FLOPs per token)."""
    return cfg.moe_expert_size or cfg.ffn_width // cfg.moe_top_k


def param_specs(prefix: str, cfg) -> dict:
    """Selection and expert inputs ~ N(0, init_std); the experts' output projections ~ N(0, residual_std)."""
    E, D, Fe = cfg.n_experts, cfg.d_model, expert_size(cfg)
    return {f"{prefix}.sel.weight": normal(E, D, std=cfg.init_std),
            f"{prefix}.fc.weight": normal(E, Fe, D, std=cfg.init_std),
            f"{prefix}.proj.weight": normal(E, D, Fe, std=residual_std(cfg))}


def top_k(z, k):
    """(selected (..., E) bool, margin (...)): the k largest scores of the last axis and the gap z_(k) - z_(k+1)."""
    xp = ops.xp_of(z)
    order = xp.argsort(-z, axis=-1)
    selected = xp.argsort(order, axis=-1) < k  # rank of each expert < k
    ranked = xp.take_along_axis(z, order, axis=-1)
    margin = ranked[..., k - 1] - ranked[..., k] if k < z.shape[-1] else xp.full(z.shape[:-1], xp.inf, dtype=z.dtype)
    return selected, margin


def moe_forward(x, w_sel, w_fc, w_proj, k, activation="gelu"):
    """x (B, T, D) -> (y (B, T, D), p = softmax(z) (B, T, E), margin (B, T), cache)."""
    xp = ops.xp_of(x)
    z = x @ w_sel.T  # (B, T, E)
    s = 1.0 / (1.0 + xp.exp(-z))
    selected, margin = top_k(z, k)
    h = xp.einsum("btd,efd->btef", x, w_fc)  # every expert's hidden layer (B, T, E, Fe)
    a, c_act = ops.activation_forward(h, activation)
    o = xp.einsum("btef,edf->bted", a, w_proj)  # every expert's output (B, T, E, D)
    w = s * selected  # sigmoid scores of the top-k, 0 elsewhere, not renormalised
    y = xp.einsum("bte,bted->btd", w, o)
    p = xp.exp(z - z.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    return y, p, margin, (x, w_sel, w_fc, w_proj, s, selected, c_act, a, o, w, p)


def moe_backward(dy, cache, dp=None):
    """dy (B, T, D), dp (B, T, E) or None: the gradient of p -> (dx, dw_sel, dw_fc, dw_proj)."""
    xp = ops.xp_of(dy)
    x, w_sel, w_fc, w_proj, s, selected, c_act, a, o, w, p = cache
    dz = xp.einsum("btd,bted->bte", dy, o) * selected * s * (1.0 - s)  # through the sigmoid of the selected
    if dp is not None:  # softmax backward
        dz = dz + p * (dp - xp.sum(dp * p, axis=-1, keepdims=True))
    do = w[..., None] * dy[:, :, None, :]  # (B, T, E, D)
    dw_proj = xp.einsum("bted,btef->edf", do, a)
    dh = ops.activation_backward(xp.einsum("bted,edf->btef", do, w_proj), c_act)
    dw_fc = xp.einsum("btef,btd->efd", dh, x)
    dx = xp.einsum("btef,efd->btd", dh, w_fc) + dz @ w_sel
    return dx, xp.einsum("bte,btd->ed", dz, x), dw_fc, dw_proj


def forward(params, prefix: str, x, cfg, rope=None):
    """x: (B, T, D) -> (B, T, D); the cache carries this call's Record (p, margin) for the balance term."""
    y, p, margin, c = moe_forward(x, *(params[f"{prefix}.{n}.weight"] for n in ("sel", "fc", "proj")),
                                  cfg.moe_top_k, cfg.activation)
    return y, (prefix, c, Record(stat=p, margin=margin))


def backward(dout, cache, grads):
    """Adds the weight gradients (including the balance term's, via the Record's dstat) to `grads`; returns dx."""
    prefix, c, rec = cache
    dx, *dws = moe_backward(dout, c, rec.dstat)
    for name, dw in zip(("sel", "fc", "proj"), dws):
        add_grad(grads, f"{prefix}.{name}.weight", dw)
    return dx


def record(cache) -> Record:
    return cache[2]


def loss_term(cfg):
    return "moe_balance", cfg.moe_balance


def term(p_bar):
    """KL(p_bar || uniform) = log E + sum_e p_bar_e log p_bar_e per sequence: (B, E) -> (B,)."""
    xp = ops.xp_of(p_bar)
    return math.log(p_bar.shape[-1]) + xp.sum(p_bar * xp.log(p_bar), axis=-1)


def term_backward(p_bar):
    return ops.xp_of(p_bar).log(p_bar) + 1.0


def flops(cfg, seq_len: int) -> float:
    """Forward FLOPs per token: the scores 2 D E, and k experts of two matmuls each, k * 2 * 2 D Fe."""
    return 2 * cfg.d_model * cfg.n_experts + cfg.moe_top_k * 4 * cfg.d_model * expert_size(cfg)
