"""Torch helpers of the halting rules (twins of reference/halting/base.py) and the halting unit as a module.

Same op order as the reference (cumulative sums and survival products are sequential, step by step), so a float64
run agrees with numpy to rounding. Autograd supplies the backward that the reference writes by hand: N is a
threshold decision (no gradient), the weights are differentiable through the signals.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from reference.halting.base import NORM_FLOOR

from ..layers import norm


@dataclass
class Halting:
    weights: torch.Tensor      # (..., K)  sum_n weights_n = 1
    n_steps: torch.Tensor      # (...)     N, int64
    remainder: torch.Tensor    # (...)     1 - sum_{n<N} weights_n
    ponder_cost: torch.Tensor  # (...)     N + R (ACT), E[n] (PonderNet), N otherwise
    kl: torch.Tensor           # (...)     KL(p || prior) for PonderNet, 0 otherwise
    margin: torch.Tensor       # (...)     distance of the halting statistic to its threshold at the decisions taken
    exit_probs: torch.Tensor | None = None  # (..., K) exit distribution of the loss (exit_gate); None = weights


class HaltUnit(nn.Module):
    """h = sigmoid(w . norm(s) + b), the norm without a gain (reference/halting/unit.py). The dot product is a
    multiply-and-sum, which autocast leaves in float32: halting decisions are not made in bf16."""

    def __init__(self, cfg):
        super().__init__()
        self.kind = cfg.norm
        self.weight = nn.Parameter(torch.zeros(cfg.d_model))  # (D,)
        self.bias = nn.Parameter(torch.zeros(1))               # (1,)

    def forward(self, s):  # (B, T, D) -> (B, T)
        return torch.sigmoid(self.logit(s))

    def logit(self, s):  # (..., D) -> (...): z = w . norm(s) + b, the pre-sigmoid logit
        return (norm(s, kind=self.kind) * self.weight).sum(dim=-1) + self.bias[0]


def steps(K, like):
    return torch.arange(1, K + 1, dtype=like.dtype, device=like.device)  # (K,) = 1..K


def before_min(K, min_loops, device):
    return torch.arange(1, K + 1, device=device) < min_loops  # (K,) True where no halting is allowed


def first_true(cond):
    """1-based index of the first True along the last axis; K where none is (the last step always halts)."""
    cond = torch.cat([cond[..., :-1], torch.ones_like(cond[..., -1:])], dim=-1)
    return cond.to(torch.uint8).argmax(dim=-1) + 1  # argmax returns the first maximum


def margin(stat, threshold, n_steps, min_loops):
    """min over the decision steps n in [min_loops, min(N, K-1)] of |stat_n - threshold| (inf if none)."""
    K = stat.shape[-1]
    n = torch.arange(1, K + 1, device=stat.device)
    decided = (n >= min_loops) & (n < K) & (n <= n_steps[..., None])
    return torch.where(decided, (stat.detach() - threshold).abs(), torch.inf).amin(dim=-1)


def one_hot(n_steps, K, like, margin_):
    """The Halting of a rule whose output is the state at step N alone (fixed, converge)."""
    weights = (steps(K, like) == n_steps[..., None]).to(like.dtype)
    ones = torch.ones(n_steps.shape, dtype=like.dtype, device=like.device)
    return Halting(weights=weights, n_steps=n_steps, remainder=ones, ponder_cost=n_steps.to(like.dtype),
                   kl=torch.zeros_like(ones), margin=margin_)


def relative_change(s_new, s):
    """delta = ||s_new - s|| / (||s|| + NORM_FLOOR) per token, on detached states: (B, T, D) x 2 -> (B, T)."""
    s, s_new = s.detach(), s_new.detach()
    return ((s_new - s) ** 2).sum(-1).sqrt() / ((s * s).sum(-1).sqrt() + NORM_FLOOR)


class TorchRule:
    """Mixin of the torch twins: a rule's halting unit as a module (or None). The rest of the interface
    (decide, resolve, and everything config-level: parameters, loss weights, FLOPs) is the reference rule's, with
    decide/resolve overridden in torch where numpy and torch differ."""

    def make_unit(self, cfg):
        return HaltUnit(cfg) if self.uses_unit else None

    def start(self, like):
        return None
