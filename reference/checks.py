"""Input checks shared by both backends (one implementation, one set of messages). Duck-typed: numpy and CuPy
arrays and torch tensors all pass through the same code; each check names the problem and the fix."""
from __future__ import annotations

from .ops import IGNORE_INDEX  # a target id the loss skips


def _is_integer_dtype(dtype) -> bool:
    if hasattr(dtype, "kind"):  # numpy / cupy
        return dtype.kind in "iu"
    return not (dtype.is_floating_point or dtype.is_complex) and str(dtype) != "torch.bool"  # torch


def check_tokens(tokens, cfg, name: str = "tokens") -> None:
    """ValueError for anything but an integer (B, T) array with ids in [0, vocab) and 1 <= T <= block_size
    (targets: ids may also be the ignore index -1)."""
    shape = tuple(tokens.shape) if hasattr(tokens, "shape") else None
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D integer array (batch, time); got shape {shape}")
    if not _is_integer_dtype(tokens.dtype):
        raise ValueError(f"{name} must hold integer token ids; got dtype {tokens.dtype}")
    B, T = shape
    if B < 1:
        raise ValueError(f"{name} is an empty batch (shape {shape}): pass at least one sequence")
    if T < 1 or T > cfg.block_size:
        raise ValueError(f"{name} has length {T}, must be in [1, block_size={cfg.block_size}]: "
                         f"cut the sequence or raise block_size")
    lo, hi = int(tokens.min()), int(tokens.max())
    floor = IGNORE_INDEX if name == "targets" else 0
    if lo < floor or hi >= cfg.vocab_size:
        raise ValueError(f"{name} contain ids in [{lo}, {hi}], outside [{floor}, vocab_size={cfg.vocab_size}): "
                         f"use the tokenizer the model was built for or raise vocab_size")


def check_targets(targets, tokens, cfg) -> None:
    """Targets: like tokens (ids may also be -1, ignored by the loss), the same shape, at least one real target."""
    check_tokens(targets, cfg, "targets")
    if tuple(targets.shape) != tuple(tokens.shape):
        raise ValueError(f"targets shape {tuple(targets.shape)} differs from tokens shape {tuple(tokens.shape)}")
    if not bool((targets != IGNORE_INDEX).any()):
        raise ValueError("cross_entropy: every target is the ignore index -1; give at least one real target")
