"""Torch twin of reference/body/linear_attention.py: causal linear attention, phi(x) = elu(x) + 1.

`forward` uses the prefix-sum (recurrent) form, the point of linear attention: with the features of each head,
    S_t = cumsum_j phi(k_j) v_j^T,  z_t = cumsum_j phi(k_j),  out_t = phi(q_t)^T S_t / phi(q_t)^T z_t
(with RoPE, R phi(q) and R phi(k) in the numerator's state and read, as in the reference), costing O(T D d_h) instead
of O(T^2 D); the reference's quadratic masked form is tested equal to it. `attend` is the masked form over a
key/value source, for a subset of query positions (a compacting executor, a KV cache): key position <= query
position, as the softmax body's. `project` returns the unrotated features phi(q), phi(k) and v; `attend` rotates
them at their positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers import rope
from .softmax_attention import SoftmaxAttention, grouped, rope_at, split_heads


def elu1(x):
    """phi(x) = elu(x) + 1, as x + 1 for x > 0 and exp(x) otherwise: F.elu(x) + 1 would compute (exp(x) - 1) + 1 and
    lose the relative precision of small features (reference.body.linear_attention.elu1)."""
    return torch.where(x > 0, x + 1, torch.exp(x.clamp(max=0)))


def _features(x, w_qkv, n_head, n_kv_head=None):
    """phi(q) (B, H, T, hd), phi(k) and v (B, Hkv, T, hd) of x (B, T, D)."""
    q, k, v = split_heads(F.linear(x, w_qkv), n_head, n_kv_head)
    return elu1(q), elu1(k), v


def _merge(y, w_proj):
    """(B, H, T, hd) heads -> (B, T, D), projected."""
    B, H, T, hd = y.shape
    return F.linear(y.transpose(1, 2).reshape(B, T, H * hd), w_proj)


def linear_attention(x, w_qkv, w_proj, n_head, rope_cs=None, n_kv_head=None):
    """Causal linear attention by prefix sums. x: (B, T, D); w_qkv: ((H + 2 Hkv) hd, D); w_proj: (D, D);
    rope_cs: (cos, sin); n_kv_head: Hkv key/value heads (None = H), each repeated for its H / Hkv query heads."""
    fq, fk, v = _features(x, w_qkv, n_head, n_kv_head)
    groups = n_head // fk.shape[1]
    fk, v = fk.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, T, hd)
    rq, rk = (rope(fq, *rope_cs), rope(fk, *rope_cs)) if rope_cs is not None else (fq, fk)
    state = torch.cumsum(rk[..., :, None] * v[..., None, :], dim=2)  # S_t (B, H, T, hd, hd)
    num = (rq[..., None, :] @ state).squeeze(-2)  # (B, H, T, hd)
    den = (fq * torch.cumsum(fk, dim=2)).sum(-1, keepdim=True)  # phi(q_t)^T z_t (B, H, T, 1)
    return _merge(num / den, w_proj)


class LinearAttention(SoftmaxAttention):
    """The softmax body's parameters, qkv.weight ((H + 2 Hkv) hd, D) and proj.weight (D, D), under the block's
    `attn.` prefix."""

    def forward(self, x, rope_cs):  # (B, T, D) -> (B, T, D)
        return linear_attention(x, self.qkv.weight, self.proj.weight, self.n_head, rope_cs, self.n_kv_head)

    def project(self, x, positions, rope_cs):
        """phi(q) (B, H, T, hd), phi(k) and v (B, Hkv, T, hd) of inputs x (B, T, D); unrotated (attend rotates them
        at their positions)."""
        return _features(x, self.qkv.weight, self.n_head, self.n_kv_head)

    def attend(self, x_q, positions, k, v, rope_cs, key_positions=None, key_mask=None, q=None):
        """Queries from x_q (B, Tq, D) at positions (B, Tq) against features k = phi(k), v (B, Hkv, Tk, hd) at
        key_positions (B, Tk) (default 0..Tk-1), masked to key position <= query position -> (B, Tq, D).
        key_mask: (B, Tk) or (B, Tq, Tk) bool, False = never read (left padding); q: phi(q) from `project`."""
        B, n_kv = x_q.shape[0], k.shape[1]
        fq = self.project(x_q, positions, rope_cs)[0] if q is None else q
        if key_positions is None:
            key_positions = torch.arange(k.shape[2], device=k.device).expand(B, -1)
        visible = key_positions[:, None, None, None, :] <= positions[:, None, None, :, None]  # (B, 1, 1, Tq, Tk)
        if key_mask is not None:
            visible = visible & (key_mask[:, None] if key_mask.ndim == 2 else key_mask)[:, None, None]
        visible = visible.to(fq.dtype)
        rk = rope_at(k, rope_cs, key_positions)[:, :, None]  # (B, Hkv, 1, Tk, hd)
        num = (grouped(rope_at(fq, rope_cs, positions), n_kv) @ rk.transpose(-1, -2)) * visible  # (B, Hkv, G, Tq, Tk)
        den = ((grouped(fq, n_kv) @ k[:, :, None].transpose(-1, -2)) * visible).sum(-1, keepdim=True)
        return _merge(((num @ v[:, :, None]) / den).flatten(1, 2), self.proj.weight)
