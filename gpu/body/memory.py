"""Torch twin of reference/body/memory.py: gated memory banks in the core blocks (Frey et al. 2026).

    m = softmax(norm_q(h) norm_k(K)^T / sqrt(D)) V,   h <- h + sum_banks g_i W_i m_i,   g = sigmoid(W_g h + b_g)
`Bank` holds one bank's slots (keys, values, k_norm); a core block's `Memory` owns its local bank and reads the
global one, which the model owns (`memory.*`) and hands to each core block. The block keeps that reference outside
its registered submodules (a plain list), so the global bank's parameters are named once, at the top level.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import NORM_EPS, Norm, norm


def memory(h, q_norm, gate, reads, kind, eps=NORM_EPS):
    """sum_i g_i W_i softmax(norm_q(h) norm_k(K_i)^T / sqrt(D)) V_i (reference.body.memory.memory_forward).
    h (B, T, D); q_norm = (weight, bias or None); gate = (W_g (n, D), b_g (n,)); reads: per bank
    (keys, values, k_weight, k_bias, W_read)."""
    q, g = norm(h, *q_norm, kind, eps), torch.sigmoid(F.linear(h, *gate))  # g (B, T, n)
    out = 0.0
    for i, (keys, values, k_weight, k_bias, w_read) in enumerate(reads):
        scores = q @ norm(keys, k_weight, k_bias, kind, eps).transpose(0, 1) / math.sqrt(h.shape[-1])  # (B, T, S)
        out = out + g[..., i, None] * F.linear(torch.softmax(scores, dim=-1) @ values, w_read)
    return out


class Bank(nn.Module):
    """Parameters keys (S, D), values (S, D), k_norm.* (D,)."""

    def __init__(self, slots, cfg):
        super().__init__()
        self.keys = nn.Parameter(torch.empty(slots, cfg.d_model))
        self.values = nn.Parameter(torch.empty(slots, cfg.d_model))
        self.k_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)


class Memory(nn.Module):
    """Parameters q_norm.*, gate.weight (n, D), gate.bias (n,), local.* (a Bank), local_proj.weight and
    global_proj.weight (D, D), under the core block's `mem.` prefix; `shared` is the model's global Bank or None."""

    def __init__(self, cfg, shared=None):
        super().__init__()
        D, local = cfg.d_model, cfg.memory in ("local", "both")
        self.q_norm = Norm(D, cfg.norm, cfg.norm_eps)
        self.local = Bank(cfg.memory_local_slots, cfg) if local else None
        self.local_proj = nn.Linear(D, D, bias=False) if local else None
        self.global_proj = nn.Linear(D, D, bias=False) if shared is not None else None
        self.gate = nn.Linear(D, int(local) + int(shared is not None))
        self.kind, self.eps = cfg.norm, cfg.norm_eps
        self._shared = [shared] if shared is not None else []  # not a submodule: named `memory.*` by the model

    def forward(self, h):  # (B, T, D) -> the gated reads (B, T, D), local bank first
        banks = [(self.local, self.local_proj)] if self.local is not None else []
        banks += [(bank, self.global_proj) for bank in self._shared]
        reads = [(b.keys, b.values, b.k_norm.weight, b.k_norm.bias, proj.weight) for b, proj in banks]
        return memory(h, (self.q_norm.weight, self.q_norm.bias), (self.gate.weight, self.gate.bias), reads, self.kind,
                      self.eps)
