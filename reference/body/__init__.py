"""Block bodies, one file each, and the registries that map the config to them.

A body is a module with four functions: `param_specs(prefix, cfg)` (name -> ParamSpec, init included),
`forward(params, prefix, x, cfg, rope) -> (out, cache)`, `backward(dout, cache, grads) -> dx` (hand-written, checked
against finite differences) and `flops(cfg, seq_len)` (forward FLOPs per token). The block (reference/block.py)
runs x + attention(norm(x)), then + ffn(norm(.)), then, in the core blocks with memory, + memory(.), with the bodies
the config names. A body may also add a term to the loss (loss_terms.py: the MoE balance regulariser).

Adding a body: one file here, its torch twin in gpu/body/, one registry line in each __init__.py, one equivalence
case (docs/architecture.md).
"""
from __future__ import annotations

from . import linear_attention, memory, mlp, moe, softmax_attention

ATTENTIONS = {"softmax": softmax_attention, "linear": linear_attention}  # LoopConfig.attention
FFNS = {"mlp": mlp, "moe": moe}                                           # LoopConfig.ffn
MEMORY_MODES = memory.MODES                                               # LoopConfig.memory


def _lookup(registry: dict, field: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {field} body {name!r}; choose one of {sorted(registry)}") from None


def get_attention(cfg):
    return _lookup(ATTENTIONS, "attention", cfg.attention)


def get_ffn(cfg):
    return _lookup(FFNS, "ffn", cfg.ffn)


def get_memory(cfg, prefix: str = "core.0"):
    """The memory body of the block at `prefix`, or None (no memory, or a prelude / coda block)."""
    return memory if memory.applies(prefix, cfg) else None
