"""Torch twin of reference/body/moe.py: sigma-MoE (MoEUT), y = sum_{e in topk(z)} sigmoid(z_e) W_proj[e] act(W_fc[e] x).

Unlike the reference (every expert on every token, unselected ones weighted 0), this computes each expert on the
tokens that selected it only: gather the rows, two matmuls, scatter-add back (index_select / index_add, both
deterministic under torch.use_deterministic_algorithms). The selection is a data-dependent shape, so
torch.compile breaks its graph there. While the model records (gpu/body/loss_terms.py), each call appends
(softmax(z), top-k margin) to `records` for the balance term and aux["route_margin"].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference.body.moe import expert_size


def moe(x, w_sel, w_fc, w_proj, k, activation="gelu"):
    """x (B, T, D); w_sel (E, D); w_fc (E, Fe, D); w_proj (E, D, Fe) -> (y (B, T, D), softmax(z) (B, T, E),
    margin z_(k) - z_(k+1) (B, T), inf when k = E)."""
    z = F.linear(x, w_sel)  # (B, T, E)
    E = z.shape[-1]
    ranked, chosen = z.topk(min(k + 1, E), dim=-1)
    margin = ranked[..., k - 1] - ranked[..., k] if k < E else torch.full_like(z[..., 0], math.inf)
    flat, gates = x.reshape(-1, x.shape[-1]), torch.sigmoid(z).reshape(-1, E)
    chosen = chosen[..., :k].reshape(-1, k)
    y = torch.zeros_like(flat)
    for e in range(E):
        rows = (chosen == e).any(dim=-1).nonzero().squeeze(-1)  # the tokens that picked expert e
        h = F.linear(flat.index_select(0, rows), w_fc[e])
        h = F.gelu(h, approximate="tanh") if activation == "gelu" else F.relu(h)
        y = y.index_add(0, rows, F.linear(h, w_proj[e]) * gates.index_select(0, rows)[:, e, None])
    return y.view_as(x), torch.softmax(z, dim=-1), margin.detach()


class _Weight(nn.Module):
    """A bare parameter `weight` of any shape (the experts' stacked matrices), so names match the reference's."""

    def __init__(self, *shape):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape))


class MoE(nn.Module):
    """Parameters sel.weight (E, D), fc.weight (E, Fe, D), proj.weight (E, D, Fe), under the block's `mlp.` prefix."""

    def __init__(self, cfg):
        super().__init__()
        E, D, Fe = cfg.n_experts, cfg.d_model, expert_size(cfg)
        self.k, self.activation = cfg.moe_top_k, cfg.activation
        self.sel = nn.Linear(D, E, bias=False)
        self.fc, self.proj = _Weight(E, Fe, D), _Weight(E, D, Fe)
        self.records = None  # a list while the model records its bodies' loss terms

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        y, p, margin = moe(x, self.sel.weight, self.fc.weight, self.proj.weight, self.k, self.activation)
        if self.records is not None:
            self.records.append((p, margin))
        return y

    @staticmethod
    def loss_term(cfg):
        return "moe_balance", cfg.moe_balance

    @staticmethod
    def term(p_bar):
        """KL(p_bar || uniform) per sequence, (B, E) -> (B,) (reference.body.moe.term)."""
        return math.log(p_bar.shape[-1]) + (p_bar * p_bar.log()).sum(-1)
