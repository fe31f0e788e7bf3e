"""The default executor: the compacting one where it applies and pays, the masked one everywhere else.

Measured side by side (docs/benchmarks.md, `python -m gpu.bench adaptive`, CPU): a training step at a realized depth
below K is faster with compaction (1.34 s vs 1.47 s at d_model 256, T 256, realized depth 2.62 of 4), and it costs
+1.5% when nothing halts. Compaction applies to an adaptive rule (a fixed depth has nothing to skip), to groups it
can compact (one block, or several under halted_kv="frozen"; no MoE) and to eager execution (its row counts are
data-dependent, a host sync per step, so under torch.compile the masked executor's fixed shapes win). Both compute
the same numbers (tests/test_equivalence.py, tests/test_halted_kv.py), so the choice is a matter of speed only.
"""
from __future__ import annotations

import torch

from .compact import run_compact, why_not_compactable
from .masked import run_masked


def run_auto(group, blocks, e, rope_cs, K: int, step_sites=None):
    """Same contract as gpu.executors.masked.run_masked: run_compact when it applies (see the module docstring)."""
    compact = (group.rule.adaptive and not torch.compiler.is_compiling()
               and why_not_compactable(group.cfg, blocks) is None)
    return (run_compact if compact else run_masked)(group, blocks, e, rope_cs, K, step_sites)
