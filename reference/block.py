"""The pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.)). Parameters live under a prefix."""
from __future__ import annotations

from . import ops


def block_param_shapes(prefix: str, cfg) -> dict[str, tuple]:
    """Names and shapes of one block's parameters (torch layout: Linear weights are (out, in))."""
    D, F = cfg.d_model, cfg.mlp_ratio * cfg.d_model
    shapes = {
        f"{prefix}.attn_norm.weight": (D,),
        f"{prefix}.attn.qkv.weight": (3 * D, D),
        f"{prefix}.attn.proj.weight": (D, D),
        f"{prefix}.mlp_norm.weight": (D,),
        f"{prefix}.mlp.fc.weight": (F, D),
        f"{prefix}.mlp.proj.weight": (D, F),
    }
    if cfg.norm == "layernorm":
        shapes[f"{prefix}.attn_norm.bias"] = (D,)
        shapes[f"{prefix}.mlp_norm.bias"] = (D,)
    return shapes


def norm_params(params, name):
    """(weight, bias) of the norm called `name` (bias is None for RMSNorm)."""
    return params[f"{name}.weight"], params.get(f"{name}.bias")


def add_grad(grads, name, g):
    """Accumulate a gradient: a weight used at several loop steps sums its gradients (weight tying)."""
    if g is not None:
        grads[name] = grads[name] + g if name in grads else g


def add_norm_grads(grads, name, dweight, dbias):
    add_grad(grads, f"{name}.weight", dweight)
    add_grad(grads, f"{name}.bias", dbias)


def block_forward(params, prefix, x, cfg, rope):
    """x: (B, T, D) -> (B, T, D)."""
    p = params
    a_in, c_n1 = ops.norm_forward(x, *norm_params(p, f"{prefix}.attn_norm"), kind=cfg.norm)
    a, c_att = ops.attention_forward(a_in, p[f"{prefix}.attn.qkv.weight"], p[f"{prefix}.attn.proj.weight"],
                                     cfg.n_head, rope)
    x1 = x + a
    m_in, c_n2 = ops.norm_forward(x1, *norm_params(p, f"{prefix}.mlp_norm"), kind=cfg.norm)
    m, c_mlp = ops.mlp_forward(m_in, p[f"{prefix}.mlp.fc.weight"], p[f"{prefix}.mlp.proj.weight"], cfg.activation)
    return x1 + m, (prefix, c_n1, c_att, c_n2, c_mlp)


def block_backward(dout, cache, grads):
    """Adds the block's weight gradients to `grads`; returns dx (B, T, D)."""
    prefix, c_n1, c_att, c_n2, c_mlp = cache
    dm_in, dw_fc, dw_proj = ops.mlp_backward(dout, c_mlp)
    add_grad(grads, f"{prefix}.mlp.fc.weight", dw_fc)
    add_grad(grads, f"{prefix}.mlp.proj.weight", dw_proj)
    dx1_n, dw, db = ops.norm_backward(dm_in, c_n2)
    add_norm_grads(grads, f"{prefix}.mlp_norm", dw, db)
    dx1 = dout + dx1_n
    da_in, dw_qkv, dw_proj = ops.attention_backward(dx1, c_att)
    add_grad(grads, f"{prefix}.attn.qkv.weight", dw_qkv)
    add_grad(grads, f"{prefix}.attn.proj.weight", dw_proj)
    dx_n, dw, db = ops.norm_backward(da_in, c_n1)
    add_norm_grads(grads, f"{prefix}.attn_norm", dw, db)
    return dx1 + dx_n


def stack_forward(params, prefixes, x, cfg, rope):
    """Apply blocks in order: the body of a prelude, a coda, or one loop step of a core group."""
    caches = []
    for prefix in prefixes:
        x, c = block_forward(params, prefix, x, cfg, rope)
        caches.append(c)
    return x, caches


def stack_backward(dout, caches, grads):
    for c in reversed(caches):
        dout = block_backward(dout, c, grads)
    return dout
