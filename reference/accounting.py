"""Parameters, FLOPs and the iso-FLOP dense baseline of a looped model.

Looping is a parameter saving, not a compute saving: every loop step costs a full pass of the core
blocks. So we report both: unique parameters (what is stored), effective parameters (what an unrolled
stack of the same depth would store) and FLOPs per token at the *realized* mean depth.

FLOP convention (nanoGPT / PaLM): a matmul of an (m, k) by a (k, n) matrix costs 2 m k n; attention
scores and the weighted sum cost 2 T D each per token over the full context T (causal masking is not
discounted); a training step costs 3x the forward pass (backward = 2x forward).
FLOPs "at realized depth" are what an implementation that skips halted tokens spends; a batched
implementation that runs every token until the last one halts spends more.
"""
from __future__ import annotations

from .body import get_attention, get_ffn, get_memory
from .config import LoopConfig, dense_variant
from .halting import get_rule
from .model import param_shapes

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, keyed by a part of the device name
# (torch.cuda.get_device_name); the first key found in the name wins, so specific keys come first.
PEAK_FLOPS = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
    "RTX 4090": 165e12, "RTX 4070": 58e12,
}


def peak_flops(device_name: str) -> float | None:
    """The stated bf16 peak of a device from its name, e.g. 'NVIDIA H100 80GB HBM3' -> 989e12; None if unknown."""
    return next((peak for key, peak in PEAK_FLOPS.items() if key.lower() in device_name.lower()), None)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def param_counts(cfg: LoopConfig) -> dict[str, int]:
    """unique: every stored weight; embedding: token/position embeddings and an untied LM head;
    non_embedding: unique - embedding; core: the looped blocks' weights (incl. step scale, halting, injection)."""
    shapes = param_shapes(cfg)
    unique = sum(_numel(s) for s in shapes.values())
    embedding = sum(_numel(s) for n, s in shapes.items() if n in ("embed.weight", "pos.weight", "lm_head.weight"))
    core = sum(_numel(s) for n, s in shapes.items() if n.startswith(("core.", "loop.")))
    return dict(unique=unique, embedding=embedding, non_embedding=unique - embedding, core=core)


def effective_params(cfg: LoopConfig, mean_depth: float | None = None, non_embedding: bool = True) -> float:
    """Parameters of the unrolled model: the core counted once per loop step taken (default: max_loops)."""
    c = param_counts(cfg)
    depth = cfg.max_loops if mean_depth is None else mean_depth
    base = c["non_embedding"] if non_embedding else c["unique"]
    return base + (depth - 1) * c["core"]


def block_flops(cfg: LoopConfig, seq_len: int | None = None, core: bool = True) -> float:
    """Forward FLOPs per token of one transformer block at context length seq_len (default block_size): its
    attention body plus its FFN body, plus its memory reads in a core block (core=False: a prelude or coda block,
    which has no memory). Each body counts its own (reference/body/)."""
    T = seq_len or cfg.block_size
    memory = get_memory(cfg) if core else None
    return get_attention(cfg).flops(cfg, T) + get_ffn(cfg).flops(cfg, T) + (memory.flops(cfg, T) if memory else 0)


def loop_step_overhead_flops(cfg: LoopConfig) -> float:
    """Per loop step and group, beyond its blocks: the halting rule's signal (the unit's 2 D) and the concat
    injection (4 D^2)."""
    D = cfg.d_model
    inject = 4 * D * D if cfg.input_injection == "concat" else 0
    return get_rule(cfg.halt).step_flops(cfg) + inject


def flops_per_token(cfg: LoopConfig, mean_depth: float | None = None, seq_len: int | None = None,
                    training: bool = True) -> float:
    """FLOPs per token at a realized mean depth (mean loop steps per group; default max_loops).
    training=True counts forward + backward (3x forward)."""
    depth = cfg.max_loops if mean_depth is None else mean_depth
    if not 0 < depth <= cfg.max_loops:
        raise ValueError(f"mean_depth={depth} is outside (0, max_loops={cfg.max_loops}]")
    blk = block_flops(cfg, seq_len)
    forward = ((cfg.n_prelude + cfg.n_coda) * block_flops(cfg, seq_len, core=False)
               + depth * (cfg.n_layer * blk + cfg.n_groups * loop_step_overhead_flops(cfg))
               + 2 * cfg.d_model * cfg.vocab_size)
    return 3 * forward if training else forward


def mfu(flops_per_token_: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak FLOP/s."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops={peak_flops} must be > 0 (see PEAK_FLOPS)")
    return flops_per_token_ * tokens_per_second / peak_flops


def iso_flop_dense(cfg: LoopConfig, mean_depth: float | None = None, seq_len: int | None = None) -> LoopConfig:
    """The dense (no loop, no halting) config of the same width whose training FLOPs per token are closest to
    those of `cfg` at `mean_depth`: n_layer = round((F_looped - F_head) / F_block)."""
    target = flops_per_token(cfg, mean_depth, seq_len, training=False)
    head = 2 * cfg.d_model * cfg.vocab_size
    n_layer = max(1, round((target - head) / block_flops(cfg, seq_len)))
    return dense_variant(cfg, n_layer)
