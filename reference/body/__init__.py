"""Block bodies, one file each, and the registries that map the config to them.

A body is a module with four functions: `param_specs(prefix, cfg)` (name -> ParamSpec, init included),
`forward(params, prefix, x, cfg, rope) -> (out, cache)`, `backward(dout, cache, grads) -> dx` (hand-written, checked
against finite differences) and `flops(cfg, seq_len)` (forward FLOPs per token). The block (reference/block.py)
runs x + attention(norm(x)), then + ffn(norm(.)), with the bodies the config names.

Adding a body: one file here, its torch twin in gpu/body/, one registry line in each __init__.py, one equivalence
case (docs/architecture.md).
"""
from __future__ import annotations

from . import mlp, softmax_attention

ATTENTIONS = {"softmax": softmax_attention}  # LoopConfig.attention
FFNS = {"mlp": mlp}                          # LoopConfig.ffn


def _lookup(registry: dict, field: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {field} body {name!r}; choose one of {sorted(registry)}") from None


def get_attention(cfg):
    return _lookup(ATTENTIONS, "attention", cfg.attention)


def get_ffn(cfg):
    return _lookup(FFNS, "ffn", cfg.ffn)
