"""The command line of gpu.analyze: one sub-command per analysis, each printing its tables and the files it wrote
(the package docstring is the --help text). Library functions raise; only `main` turns errors into exit codes."""
from __future__ import annotations

import math
import os
import sys

from ..cli import check_float, check_int, check_option, command_parser, print_result, read_json, read_text, run_command
from .calibration import calibration
from .convergence import convergence
from .dense_loss import dense_loss
from .depth_by_topic import depth_by_topic
from .depth_map import depth_map
from .difficulty import difficulty
from .extrapolate import extrapolate


def build_parser():
    """(parser, its sub-command group) with the common options of every sub-command: the run folder, --data,
    --no-progress and, for the window-based analyses, --windows (default per analysis), --split, --batch-size."""
    ap, sub = command_parser("python -m gpu.analyze", sys.modules[__package__].__doc__)

    def add(name, help_, windows):
        p = sub.add_parser(name, help=help_)
        p.add_argument("run", help="run folder written by python -m gpu.train")
        p.add_argument("--data", default=None, help="data folder (default: the run's own)")
        if windows:
            p.add_argument("--windows", type=int, default=windows, help="held-out windows of block_size tokens")
            p.add_argument("--split", default="val", choices=["train", "val"])
            p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--no-progress", action="store_true")
        return p

    p = add("depth-by-topic", "depth per label and token class with bootstrap CIs", 256)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p = add("depth-map", "HTML + PNG heat map of depth over a text", 0)
    p.add_argument("--text", required=True, help="text file")
    p.add_argument("--name", default="depth_map", help="output file name stem")
    p = add("convergence", "per-step deltas, spectral norms, Lipschitz estimate", 64)
    p.add_argument("--loops", type=int, default=None, help="forced depth for the delta curve (default 3K)")
    p.add_argument("--lipschitz-iters", type=int, default=50)
    p = add("calibration", "loss vs depth, under-/over-thinking", 128)
    p.add_argument("--tol", type=float, default=0.05, help="nats: how close to the best forced loss counts as best")
    p = add("extrapolate", "loss/accuracy vs test-time loops and halting threshold", 128)
    p.add_argument("--loops", default="1..3K", help="A..B or a comma list; K = the run's max_loops")
    p.add_argument("--thresholds", default=None, help="comma list of act_eps (or converge_tol) values")
    p = add("dense-loss", "Spearman rho of depth vs a dense baseline's per-token loss", 256)
    p.add_argument("--dense", required=True, help="run folder of a dense model on the same tokenizer")
    p.add_argument("--boot", type=int, default=300, help="bootstrap resamples")
    p = add("difficulty", "Spearman rho of depth vs ground-truth difficulty (synthetic tasks)", 512)
    p.add_argument("--boot", type=int, default=300, help="bootstrap resamples")
    p.add_argument("--where", default=None, help="MEASURE=VALUE: only answer tokens with this value, e.g. "
                                                 "significant=1 (addition without its padding zeros)")
    return ap, sub


def check_args(a) -> None:
    """ValueError naming the flag (or the file) for an option value or input file the analysis cannot use, before
    any work: counts >= 1, finite thresholds, a run folder whose config.json is JSON, a UTF-8 --text file."""
    for flag in ("--windows", "--batch-size", "--boot", "--lipschitz-iters"):
        check_int(flag, getattr(a, flag[2:].replace("-", "_"), 1), 1)
    if a.cmd == "convergence":
        check_int("--loops", a.loops, 1, optional=True)
    if a.cmd == "calibration":
        check_float("--tol", a.tol, 0)
    if a.cmd == "extrapolate" and a.thresholds is not None:
        for value in a.thresholds.split(","):
            try:
                ok = math.isfinite(float(value)) and float(value) > 0
            except ValueError:
                ok = False
            check_option("--thresholds", a.thresholds, ok, "a comma list of finite numbers > 0, e.g. 0.01,0.05")
    config = os.path.join(a.run, "config.json")
    if os.path.isfile(config):
        read_json(config, "the run folder is damaged")
    if a.cmd == "depth-map":
        read_text(a.text, "--text file")


def main(argv=None) -> int:
    """`python -m gpu.analyze SUBCOMMAND RUN [options]`: run one analysis; 0 on success, 2 on bad input."""
    ap, _ = build_parser()
    a = ap.parse_args(argv)
    code = run_command(lambda: check_args(a))
    if code:
        return code
    common = dict(data=a.data, progress=not a.no_progress)
    if hasattr(a, "windows"):
        common.update(windows=a.windows, split=a.split, batch_size=a.batch_size)
    commands = {"depth-by-topic": lambda: depth_by_topic(a.run, n_boot=a.boot, **common),
                "depth-map": lambda: depth_map(a.run, a.text, name=a.name, **common),
                "convergence": lambda: convergence(a.run, loops=a.loops, lipschitz_iters=a.lipschitz_iters, **common),
                "calibration": lambda: calibration(a.run, tol=a.tol, **common),
                "extrapolate": lambda: extrapolate(a.run, loops=a.loops, thresholds=a.thresholds, **common),
                "dense-loss": lambda: dense_loss(a.run, a.dense, n_boot=a.boot, **common),
                "difficulty": lambda: difficulty(a.run, n_boot=a.boot, where=a.where, **common)}
    return print_result(commands[a.cmd])
