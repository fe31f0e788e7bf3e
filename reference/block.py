"""The pre-norm transformer block: x + attention(norm(x)), then + ffn(norm(.)), then (core blocks with memory)
+ memory(.). Parameters live under a prefix.

The attention, FFN and memory bodies are components chosen by the config (reference/body/); the block only composes
them. Names under PREFIX: attn_norm.*, attn.* (the attention body), mlp_norm.*, mlp.* (the FFN body), mem.* (the
memory body, which norms its own queries).
"""
from __future__ import annotations

from . import ops
from .body import get_attention, get_ffn, get_memory
from .params import ParamSpec, add_grad, constant

__all__ = ["block_param_specs", "block_forward", "block_backward", "stack_forward", "stack_backward", "add_grad",
           "add_norm_grads", "norm_param_specs", "norm_params", "block_records", "kv_input"]


def norm_param_specs(name: str, cfg) -> dict[str, ParamSpec]:
    """A norm's gain (init 1) and, for LayerNorm, its bias (init 0)."""
    specs = {f"{name}.weight": constant(cfg.d_model, value=1.0)}
    if cfg.norm == "layernorm":
        specs[f"{name}.bias"] = constant(cfg.d_model, value=0.0)
    return specs


def block_param_specs(prefix: str, cfg) -> dict[str, ParamSpec]:
    """Every parameter of one block, name -> ParamSpec (torch layout: Linear weights are (out, in)). The order is
    the one of files and seeded tests from before the body components: gains and bodies first, LayerNorm biases
    last (the biases draw no random numbers, so only the listing order depends on it)."""
    attn_norm, mlp_norm = norm_param_specs(f"{prefix}.attn_norm", cfg), norm_param_specs(f"{prefix}.mlp_norm", cfg)
    gains = lambda specs: {k: v for k, v in specs.items() if k.endswith(".weight")}  # noqa: E731
    biases = lambda specs: {k: v for k, v in specs.items() if not k.endswith(".weight")}  # noqa: E731
    memory = get_memory(cfg, prefix)
    return {**gains(attn_norm), **get_attention(cfg).param_specs(f"{prefix}.attn", cfg),
            **gains(mlp_norm), **get_ffn(cfg).param_specs(f"{prefix}.mlp", cfg), **biases(attn_norm), **biases(mlp_norm),
            **(memory.param_specs(f"{prefix}.mem", cfg) if memory else {})}


def norm_params(params, name):
    """(weight, bias) of the norm called `name` (bias is None for RMSNorm)."""
    return params[f"{name}.weight"], params.get(f"{name}.bias")


def add_norm_grads(grads, name, dweight, dbias):
    add_grad(grads, f"{name}.weight", dweight)
    add_grad(grads, f"{name}.bias", dbias)


def block_forward(params, prefix, x, cfg, rope, kv=None):
    """x: (B, T, D) -> (B, T, D). kv: None, or (held (B, T) bool, held_in (B, T, D) or None, const (B, T) bool) in a
    loop step under halted_kv="frozen": the positions `held` supply the keys/values of the attention inputs held_in
    instead of their own (their queries stay their own); `const` marks those held from a step that truncated backprop
    holds constant (keys/values that pass no gradient). The attention inputs the keys/values came from, a_kv
    (B, T, D), stay in the cache (kv_input) for the next step to hold."""
    attention, ffn = get_attention(cfg), get_ffn(cfg)
    a_in, c_n1 = ops.norm_forward(x, *norm_params(params, f"{prefix}.attn_norm"), kind=cfg.norm, eps=cfg.norm_eps)
    c_kv = None
    if kv is None or kv[1] is None or not bool(kv[0].any()):
        a, c_att = attention.forward(params, f"{prefix}.attn", a_in, cfg, rope)
        c_kv = None if kv is None else (kv[0], a_in, False)
    else:
        held, held_in, const = kv
        a_kv = ops.xp_of(x).where(held[..., None], held_in, a_in)  # (B, T, D)
        a, c_att = attention.forward(params, f"{prefix}.attn", a_in, cfg, rope, x_kv=a_kv, kv_const=const)
        c_kv = (held, a_kv, True)
    x1 = x + a
    m_in, c_n2 = ops.norm_forward(x1, *norm_params(params, f"{prefix}.mlp_norm"), kind=cfg.norm, eps=cfg.norm_eps)
    m, c_ffn = ffn.forward(params, f"{prefix}.mlp", m_in, cfg, rope)
    x2, memory, c_mem = x1 + m, get_memory(cfg, prefix), None
    if memory:
        r, c_mem = memory.forward(params, f"{prefix}.mem", x2, cfg, rope)
        x2 = x2 + r
    return x2, (prefix, attention, ffn, memory, c_n1, c_att, c_n2, c_ffn, c_mem, c_kv)


def kv_input(cache):
    """a_kv (B, T, D) of a block call made with kv (block_forward), else None."""
    return None if cache[-1] is None else cache[-1][1]


def block_backward(dout, cache, grads, dheld=None):
    """Adds the block's weight gradients to `grads`; returns dx (B, T, D). For a call made with kv: dheld (B, T, D) or
    None is the gradient of its a_kv from the later steps that held it, and it returns (dx, dheld_in): held rows pass
    their gradient on to held_in, the others to their own attention input."""
    prefix, attention, ffn, memory, c_n1, c_att, c_n2, c_ffn, c_mem, c_kv = cache
    if memory:
        dout = dout + memory.backward(dout, c_mem, grads)
    dm_in = ffn.backward(dout, c_ffn, grads)
    dx1_n, dw, db = ops.norm_backward(dm_in, c_n2)
    add_norm_grads(grads, f"{prefix}.mlp_norm", dw, db)
    dx1 = dout + dx1_n
    da_in = attention.backward(dx1, c_att, grads)
    dheld_in = None
    if c_kv is not None:
        held, _, split = c_kv
        xp = ops.xp_of(dout)
        da_in, da_kv = da_in if split else (da_in, xp.zeros_like(da_in))
        da_kv = da_kv if dheld is None else da_kv + dheld  # d a_kv: this step's attention and the later holders
        da_in = da_in + xp.where(held[..., None], 0.0, da_kv)
        dheld_in = xp.where(held[..., None], da_kv, 0.0)
    dx_n, dw, db = ops.norm_backward(da_in, c_n1)
    add_norm_grads(grads, f"{prefix}.attn_norm", dw, db)
    return dx1 + dx_n if c_kv is None else (dx1 + dx_n, dheld_in)


def block_records(cache):
    """(body prefix, body, Record) of this block call's bodies that add a loss term (reference/body/loss_terms.py)."""
    prefix, attention, ffn, memory, _, c_att, _, c_ffn, c_mem, _ = cache
    return [(f"{prefix}.{name}", body, body.record(c)) for name, body, c in
            (("attn", attention, c_att), ("mlp", ffn, c_ffn), ("mem", memory, c_mem)) if hasattr(body, "record")]


def stack_forward(params, prefixes, x, cfg, rope, kvs=None):
    """Apply blocks in order: the body of a prelude, a coda, or one loop step of a core group. kvs: one block_forward
    kv per block (halted_kv="frozen"), or None."""
    caches = []
    for i, prefix in enumerate(prefixes):
        x, c = block_forward(params, prefix, x, cfg, rope, None if kvs is None else kvs[i])
        caches.append(c)
    return x, caches


def stack_backward(dout, caches, grads, dhelds=None):
    """dx; with dhelds (one block_backward dheld per block, for a stack run with kvs): (dx, the dheld_in per block)."""
    if dhelds is None:
        for c in reversed(caches):
            dout = block_backward(dout, c, grads)
        return dout
    dprev = [None] * len(caches)
    for i in reversed(range(len(caches))):
        if caches[i][-1] is None:
            dout = block_backward(dout, caches[i], grads)
        else:
            dout, dprev[i] = block_backward(dout, caches[i], grads, dhelds[i])
    return dout, dprev
