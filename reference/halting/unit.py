"""The halting unit h = sigmoid(w . norm(s) + b) (Graves 2016, eq. 3): ACT's halting probability, PonderNet's
lambda. Its norm has no gain of its own (w absorbs the scale). Parameters loop.{g}.halt.weight (D,), .bias (1,)."""
from __future__ import annotations

from .. import ops
from ..params import ParamSpec, add_grad, constant, normal


def unit_param_specs(g: int, cfg) -> dict[str, ParamSpec]:
    """w ~ N(0, init_std); b = halt_bias_init (Graves: +1 halts early; 'deep start': -3 loops long at first)."""
    return {f"loop.{g}.halt.weight": normal(cfg.d_model, std=cfg.init_std),
            f"loop.{g}.halt.bias": constant(1, value=cfg.halt_bias_init)}


def unit_logit_forward(params, g, s, cfg):
    """z = w . norm(s) + b, the unit's pre-sigmoid logit: (B, T, D) -> (B, T)."""
    n, c_norm = ops.norm_forward(s, kind=cfg.norm)
    return n @ params[f"loop.{g}.halt.weight"] + params[f"loop.{g}.halt.bias"][0], (n, c_norm, g)


def unit_forward(params, g, s, cfg):
    """h = sigmoid(w . norm(s) + b): (B, T, D) -> (B, T)."""
    xp = ops.xp_of(s)
    z, (n, c_norm, g) = unit_logit_forward(params, g, s, cfg)
    h = 1.0 / (1.0 + xp.exp(-z))
    return h, (n, c_norm, h, g)


def unit_backward(dh, cache, params, grads):
    """Adds dL/dw, dL/db to grads; returns dL/ds (B, T, D)."""
    n, c_norm, h, g = cache
    return unit_logit_backward(dh * h * (1.0 - h), (n, c_norm, g), params, grads)  # dz = dh h (1 - h)


def unit_logit_backward(dz, cache, params, grads):
    """The backward of unit_logit_forward from dL/dz (B, T): adds dL/dw, dL/db to grads; returns dL/ds (B, T, D)."""
    xp = ops.xp_of(dz)
    n, c_norm, g = cache
    add_grad(grads, f"loop.{g}.halt.weight", xp.einsum("bt,btd->d", dz, n))
    add_grad(grads, f"loop.{g}.halt.bias", xp.sum(dz).reshape(1))
    ds, _, _ = ops.norm_backward(dz[..., None] * params[f"loop.{g}.halt.weight"], c_norm)
    return ds
