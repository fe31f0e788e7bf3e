"""Torch twins of the block bodies (reference/body/), one file each, and their registries. A body is an nn.Module
built from the config whose parameter names under the block's prefix match the reference's param_specs."""
from __future__ import annotations

from .mlp import MLP
from .softmax_attention import SoftmaxAttention

ATTENTIONS = {"softmax": SoftmaxAttention}  # LoopConfig.attention
FFNS = {"mlp": MLP}                         # LoopConfig.ffn
