"""AdamW, gradient clipping and the warmup + cosine schedule, written to match torch.optim.AdamW step for step."""
from __future__ import annotations

import math

from . import ops


def decays(name: str, value) -> bool:
    """Weight decay applies to matrices (embeddings, linear weights), not to gains, biases or step scales."""
    return value.ndim >= 2


class AdamW:
    """Loshchilov & Hutter 2019, in torch's order of operations:
        p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: dict, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.params, self.lr, self.betas, self.eps, self.weight_decay = params, lr, betas, eps, weight_decay
        xp = ops.xp_of(next(iter(params.values())))
        self.m = {k: xp.zeros_like(v) for k, v in params.items()}
        self.v = {k: xp.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict, lr: float | None = None) -> None:
        """Update self.params in place from grads (same keys)."""
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        bc1, bc2_sqrt = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        xp = ops.xp_of(next(iter(grads.values())))
        for name, p in self.params.items():
            g = grads[name]
            if self.weight_decay and decays(name, p):
                p *= 1 - lr * self.weight_decay
            m, v = self.m[name], self.v[name]
            m += (g - m) * (1 - b1)
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr / bc1) * m / (xp.sqrt(v) / bc2_sqrt + self.eps)

    def state_dict(self) -> dict:
        return dict(t=self.t, m=self.m, v=self.v)

    def load_state_dict(self, state: dict) -> None:
        self.t, self.m, self.v = int(state["t"]), state["m"], state["v"]


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all grads in place so their global L2 norm is at most max_norm (as torch does); returns the norm."""
    xp = ops.xp_of(next(iter(grads.values())))
    total = float(xp.sqrt(sum(xp.sum(g * g) for g in grads.values())))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return total


def lr_at(step: int, max_lr: float, warmup: int, total: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to min_lr_ratio * max_lr at step `total`."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
