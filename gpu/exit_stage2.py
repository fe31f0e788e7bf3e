"""Torch twin of reference/exit_stage2.py: Stage II of the exit gate (Ouro, arXiv 2510.25741, as we read it), the
language model frozen and only the gate trained. With L_n the per-token CE of step n's logits (detached):

    I_n = max(0, L_{n-1} - L_n),   w_n = sigmoid(k (I_n - gamma)),
    L_II = mean over the real targets and n in M of -[ w_n log(1 - lambda_{n-1}) + (1 - w_n) log lambda_{n-1} ],

M = {n : max(2, min_loops + 1) <= n <= K} (the gate after step n - 1 decides whether step n runs), computed on the
gate's logit z as w softplus(z) + (1 - w) softplus(-z). Autograd supplies the gradient the reference writes by hand.
LoopedTransformer.forward(tokens, targets, exit_stage2=True) returns it as the loss; `python -m gpu.train
--exit-stage2` trains with it (docs/training.md).
"""
from __future__ import annotations

import torch

from reference.exit_stage2 import decision_steps


def sigmoid(x):
    return 0.5 * (1.0 + torch.tanh(0.5 * x))  # the reference's form, for float64 agreement


def softplus(z):
    return torch.logaddexp(torch.zeros_like(z), z)  # log(1 + e^z), finite for every z


def exit_stage2_loss(z, nll, valid, min_loops, k, gamma):
    """z (B, T, K) the gate's logits after steps 1..K, nll (B, T, K) = L_n (no gradient), valid (B, T) bool -> L_II."""
    steps = decision_steps(z.shape[-1], min_loops)
    total = 0.0
    for n in steps:  # 1-based step n: its label w_n, the gate lambda_{n-1} (0-based index n - 2)
        gain = (nll[..., n - 2] - nll[..., n - 1]).clamp_min(0.0)  # I_n (B, T)
        w = sigmoid(k * (gain - gamma))  # w_n (B, T)
        zm = z[..., n - 2]  # logit of lambda_{n-1} (B, T)
        bce = w * softplus(zm) + (1.0 - w) * softplus(-zm)
        total = total + torch.where(valid, bce, 0.0).sum()
    return total / (valid.sum() * len(steps))
