"""`memory="local" | "global" | "both"`: gated memory banks in the core blocks (Frey et al. 2026, arXiv 2603.08391).

A bank is S learned slots: keys K (S, D) and values V (S, D). A core block reads it with its residual stream h:
    m = softmax(norm_q(h) norm_k(K)^T / sqrt(D)) V                                   (B, T, D)
and adds, as a third residual branch after its FFN,
    h <- h + g_L W_L m_L + g_G W_G m_G,     [g_L, g_G] = sigmoid(W_g h + b_g)          one scalar gate per bank
local: one bank per core block; global: one bank shared by every core block (each block reads it with its own
norm_q, W_G and gate); both: the two. The prelude and coda blocks have no memory (they run once; the banks give the
weight-tied core the storage that unique layers would have). norm_q and norm_k are the config's norm with their own
gains. Slot counts (memory_local_slots, memory_global_slots) and the gate-bias init (memory_gate_bias_init) are
config fields: docs/reference.md says where the defaults come from.
Parameters under PREFIX (= "core.{i}.mem"): q_norm.*, gate.weight (n_banks, D), gate.bias (n_banks,) [local, global
order], local.keys / local.values (S_L, D), local.k_norm.*, local_proj.weight and global_proj.weight (D, D); the
global bank at the top level: memory.keys / memory.values (S_G, D), memory.k_norm.*.
"""
from __future__ import annotations

import math

from .. import ops
from ..params import add_grad, constant, normal, residual_std

MODES = ("none", "local", "global", "both")  # LoopConfig.memory
GLOBAL = "memory"  # the prefix of the shared bank


def applies(prefix: str, cfg) -> bool:
    """Does the block at `prefix` carry memory? Core blocks only, when memory != none."""
    return cfg.memory != "none" and prefix.startswith("core.")


def banks(prefix: str, cfg) -> list[tuple[str, str]]:
    """(bank prefix, read projection prefix) of the banks the block at `prefix` reads, local first."""
    out = [(f"{prefix}.local", f"{prefix}.local_proj")] if cfg.memory in ("local", "both") else []
    return out + ([(GLOBAL, f"{prefix}.global_proj")] if cfg.memory in ("global", "both") else [])


def _norm_specs(name, cfg):
    specs = {f"{name}.weight": constant(cfg.d_model, value=1.0)}
    return {**specs, f"{name}.bias": constant(cfg.d_model, value=0.0)} if cfg.norm == "layernorm" else specs


def bank_param_specs(name: str, slots: int, cfg) -> dict:
    """A bank's keys and values ~ N(0, 1) (unit-scale slot vectors; the keys are normed anyway) and its norm_k."""
    return {f"{name}.keys": normal(slots, cfg.d_model, std=1.0), f"{name}.values": normal(slots, cfg.d_model, std=1.0),
            **_norm_specs(f"{name}.k_norm", cfg)}


def param_specs(prefix: str, cfg) -> dict:
    """norm_q; the gate W_g ~ N(0, init_std), b_g = memory_gate_bias_init; the local bank; the read projections
    W_L, W_G write into the residual stream: N(0, residual_std)."""
    read = banks(prefix, cfg)
    specs = {**_norm_specs(f"{prefix}.q_norm", cfg), f"{prefix}.gate.weight": normal(len(read), cfg.d_model,
                                                                                     std=cfg.init_std),
             f"{prefix}.gate.bias": constant(len(read), value=cfg.memory_gate_bias_init)}
    if cfg.memory in ("local", "both"):
        specs.update(bank_param_specs(f"{prefix}.local", cfg.memory_local_slots, cfg))
    return {**specs, **{f"{proj}.weight": normal(cfg.d_model, cfg.d_model, std=residual_std(cfg)) for _, proj in read}}


def global_param_specs(cfg) -> dict:
    """The shared bank (model-level parameters), when memory is global or both."""
    return bank_param_specs(GLOBAL, cfg.memory_global_slots, cfg) if cfg.memory in ("global", "both") else {}


# ----------------------------------------------------------------------------- the maths
def read_forward(q, keys, values, k_weight, k_bias, kind, eps=1e-5):
    """m = softmax(q norm_k(K)^T / sqrt(D)) V for normed queries q (B, T, D) -> (m (B, T, D), cache)."""
    xp = ops.xp_of(q)
    kn, c_k = ops.norm_forward(keys, k_weight, k_bias, kind=kind, eps=eps)  # (S, D)
    scores = (q @ kn.T) / math.sqrt(q.shape[-1])  # (B, T, S)
    a = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    a = a / a.sum(axis=-1, keepdims=True)
    return a @ values, (q, kn, c_k, a, values)


def read_backward(dm, cache):
    """-> (dq, dkeys, dvalues, dk_weight, dk_bias)."""
    xp = ops.xp_of(dm)
    q, kn, c_k, a, values = cache
    da = dm @ values.T  # (B, T, S)
    dscores = a * (da - xp.sum(da * a, axis=-1, keepdims=True)) / math.sqrt(q.shape[-1])
    dkeys, dk_weight, dk_bias = ops.norm_backward(xp.einsum("bts,btd->sd", dscores, q), c_k)
    return dscores @ kn, dkeys, xp.einsum("bts,btd->sd", a, dm), dk_weight, dk_bias


def memory_forward(h, q_norm, gate, reads, kind, eps=1e-5):
    """h (B, T, D); q_norm = (weight, bias or None); gate = (W_g (n, D), b_g (n,)); reads: per bank
    (keys, values, k_weight, k_bias, W_read) -> (sum_i g_i W_i m_i (B, T, D), cache)."""
    xp = ops.xp_of(h)
    q, c_q = ops.norm_forward(h, *q_norm, kind=kind, eps=eps)
    g = 1.0 / (1.0 + xp.exp(-(h @ gate[0].T + gate[1])))  # (B, T, n)
    out, caches = xp.zeros_like(h), []
    for i, (keys, values, k_weight, k_bias, w_read) in enumerate(reads):
        m, c_read = read_forward(q, keys, values, k_weight, k_bias, kind, eps)
        r, c_lin = ops.linear_forward(m, w_read)
        out = out + g[..., i, None] * r
        caches.append((r, c_read, c_lin))
    return out, (h, c_q, gate[0], g, caches)


def memory_backward(dout, cache):
    """-> (dh, (dq_weight, dq_bias), (dW_g, db_g), per bank (dkeys, dvalues, dk_weight, dk_bias, dW_read))."""
    xp = ops.xp_of(dout)
    h, c_q, w_gate, g, caches = cache
    dg, dq, dreads = xp.zeros_like(g), xp.zeros_like(h), []
    for i, (r, c_read, c_lin) in enumerate(caches):
        dg[..., i] = xp.sum(dout * r, axis=-1)
        dm, dw_read = ops.linear_backward(g[..., i, None] * dout, c_lin)
        dq_i, *dbank = read_backward(dm, c_read)
        dq = dq + dq_i
        dreads.append((*dbank, dw_read))
    dz = dg * g * (1.0 - g)  # (B, T, n)
    dh, dq_weight, dq_bias = ops.norm_backward(dq, c_q)
    lead = tuple(range(dz.ndim - 1))
    return dh + dz @ w_gate, (dq_weight, dq_bias), (xp.einsum("btn,btd->nd", dz, h), xp.sum(dz, axis=lead)), dreads


# ----------------------------------------------------------------------------- the component
def forward(params, prefix: str, h, cfg, rope=None):
    """h: (B, T, D) the residual stream -> the gated reads (B, T, D) the block adds to it."""
    reads = [(params[f"{bank}.keys"], params[f"{bank}.values"], params[f"{bank}.k_norm.weight"],
              params.get(f"{bank}.k_norm.bias"), params[f"{proj}.weight"]) for bank, proj in banks(prefix, cfg)]
    out, cache = memory_forward(h, (params[f"{prefix}.q_norm.weight"], params.get(f"{prefix}.q_norm.bias")),
                                (params[f"{prefix}.gate.weight"], params[f"{prefix}.gate.bias"]), reads, cfg.norm,
                                cfg.norm_eps)
    return out, (prefix, banks(prefix, cfg), cache)


def backward(dout, cache, grads):
    """Adds the gradients of the block's memory weights and of the banks it read to `grads`; returns dh."""
    prefix, read, c = cache
    dh, (dqw, dqb), (dwg, dbg), dreads = memory_backward(dout, c)
    named = {f"{prefix}.q_norm.weight": dqw, f"{prefix}.q_norm.bias": dqb, f"{prefix}.gate.weight": dwg,
             f"{prefix}.gate.bias": dbg}
    for (bank, proj), (dk, dv, dkw, dkb, dwr) in zip(read, dreads):
        named.update({f"{bank}.keys": dk, f"{bank}.values": dv, f"{bank}.k_norm.weight": dkw,
                      f"{bank}.k_norm.bias": dkb, f"{proj}.weight": dwr})
    for name, g in named.items():
        add_grad(grads, name, g)  # None (no LayerNorm bias) adds nothing
    return dh


def flops(cfg, seq_len: int = 0) -> float:
    """Forward FLOPs per token of one core block's memory: the gate 2 D n, and per bank the scores 2 D S, the
    weighted sum of values 2 S D and the read projection 2 D^2 (the slot norms are per call, not per token)."""
    D, read = cfg.d_model, banks("core.0.mem", cfg)
    slots = {"core.0.mem.local": cfg.memory_local_slots, GLOBAL: cfg.memory_global_slots}
    return 2 * D * len(read) + sum(4 * D * slots[bank] + 2 * D * D for bank, _ in read)
