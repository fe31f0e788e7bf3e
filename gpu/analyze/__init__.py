"""`python -m gpu.analyze SUBCOMMAND RUN_DIR`: what a trained looped model does with its depth.

Each subcommand reads the newest checkpoint of a `python -m gpu.train` run, measures it on held-out windows of
the run's data (its val split unless --data/--split say otherwise) and writes, atomically, into RUN_DIR/analysis/:
NAME.csv (+ NAME_*.csv), NAME.md (the tables, also printed) and NAME.png.

    depth-by-topic   realized depth per label ("topic") and per token class: mean, std, histogram, 95% cluster-
                     bootstrap CIs of the pairwise differences of the means
    depth-map        --text FILE: HTML heat map over the text (colour = depth, hover = halting weights) + PNG
    convergence      per-step relative change of the state at forced depths up to 3K; spectral norms and the
                     local Lipschitz constant of the loop map (reference.contraction); flags a non-contractive loop
    calibration      loss against realized depth; under-/over-thinking rates against the same token's loss at
                     every forced depth 1..K
    extrapolate      --loops 1..3K: loss/accuracy at forced test-time depths beyond training, and a sweep of the
                     halting threshold (act_eps; converge_tol for converge halting)
    dense-loss       --dense RUN: Spearman rho of realized depth vs a dense baseline's per-token loss on the same text
    difficulty       synthetic task runs (gpu.tasks): Spearman rho of realized depth vs ground-truth difficulty

Depth of a token = the loop steps N spent at its position (averaged over loop groups for layer scope). The label of
a position is the label of the token it predicts (gpu.data.sample_batch); the token class is that of the input
token sitting there.
"""

from __future__ import annotations

# Each analysis lives in the module of its name (depth_by_topic.py, ..., difficulty.py); importing its function here
# makes `gpu.analyze.convergence` etc. the function (the submodules stay reachable through sys.modules and
# `from gpu.analyze.convergence import ...`). Shared parts: load.py (run + windows, scoring), output.py (files,
# header), plotting.py, cli.py (the sub-commands).
from .calibration import calibration, thinking_rates
from .cli import build_parser, main
from .convergence import convergence
from .depth_by_topic import depth_by_topic, group_depth_table, token_classes
from .dense_loss import dense_loss
from .depth_map import depth_map
from .difficulty import difficulty, parse_where
from .extrapolate import extrapolate, parse_loops
from .load import exact_match, setup, summarize
from .output import header, out_name, write_outputs
from .plotting import pyplot
from .plotting import pyplot as _plt  # the name gpu.experiments imports

__all__ = ["depth_by_topic", "depth_map", "convergence", "calibration", "extrapolate", "difficulty", "main",
           "build_parser", "write_outputs", "header", "out_name", "setup", "summarize", "exact_match",
           "token_classes", "group_depth_table", "thinking_rates", "parse_loops", "parse_where", "pyplot"]
