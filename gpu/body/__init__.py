"""Torch twins of the block bodies (reference/body/), one file each, and their registries. A body is an nn.Module
built from the config whose parameter names under the block's prefix match the reference's param_specs. Memory
(gated banks, core blocks only) is built by gpu/block.py and gpu/model.py; loss_terms.py gathers the bodies' loss
terms."""
from __future__ import annotations

from .linear_attention import LinearAttention
from .memory import Bank, Memory
from .mlp import MLP
from .moe import MoE
from .softmax_attention import SoftmaxAttention

ATTENTIONS = {"softmax": SoftmaxAttention, "linear": LinearAttention}  # LoopConfig.attention
FFNS = {"mlp": MLP, "moe": MoE}                                        # LoopConfig.ffn

__all__ = ["ATTENTIONS", "FFNS", "Bank", "Memory"]
