"""The command line of gpu.experiments: iso-flop, sweep and ablation (the package docstring is the --help text).
Library functions raise; `main` turns their errors into one line and an exit status (gpu.cli)."""
from __future__ import annotations

import sys

from ..cli import check_float, check_int, check_option, command_parser, print_result


def iso_flop_args(sub) -> None:
    p = sub.add_parser("iso-flop", help="looped vs dense-1x vs dense-Kx at equal training FLOPs")
    p.add_argument("--out", default="runs/iso-flop")
    p.add_argument("--data", default="bundled")
    p.add_argument("--looped-steps", type=int, default=1500, help="steps of the looped model (sets the budget)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", default="0", help="comma list")
    p.add_argument("--eval-points", type=int, default=5, help="evaluations along each run")
    for name, default in (("d_model", 64), ("n_head", 4), ("block_size", 64), ("n_prelude", 1), ("n_layer", 1),
                          ("n_coda", 1), ("loops", 4)):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    p.add_argument("--halt", default="fixed", help="halting of the looped model (FLOPs are counted at full depth)")
    p.add_argument("--no-progress", action="store_true")


def grid_args(sub, name: str, help_: str, out: str):
    """The options a sweep and an ablation share: where, which seeds, how many jobs, and how to measure."""
    p = sub.add_parser(name, help=help_)
    p.add_argument("--out", default=out, help="the sweep's folder: runs/, logs/, analysis/")
    p.add_argument("--base", action="append", default=[], metavar="FIELD=VALUE",
                   help="a gpu.train field every cell sets (repeatable), e.g. --base max_steps=300")
    p.add_argument("--seeds", default=None, help="comma list of training seeds (default 0,1,2)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once, one process and one thread each")
    p.add_argument("--windows", type=int, default=256, help="validation windows each cell is measured on")
    p.add_argument("--where", default=None, help="task data: MEASURE=VALUE, answer tokens kept for rho "
                                                 "(e.g. significant=1)")
    p.add_argument("--measure", default=None, help="task data: the difficulty measure of rho (default: the task's)")
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples of rho's CI")
    return p


def check_grid_args(a) -> None:
    for flag in ("--jobs", "--windows", "--boot"):
        check_int(flag, getattr(a, flag[2:]), 1)


def run_sweep(a) -> dict:
    from .grid import apply_flags, empty_spec, load_spec
    from .sweep import sweep
    check_grid_args(a)
    spec = apply_flags(load_spec(a.grid) if a.grid else empty_spec(), a.base, a.setting, a.set, a.seeds)
    return sweep(spec, a.out, jobs=a.jobs, windows=a.windows, where=a.where, measure=a.measure, n_boot=a.boot)


def run_ablation(a) -> dict:
    from .ablation import BODIES, HALTS, ablation, names
    from .grid import apply_flags, empty_spec
    check_grid_args(a)
    spec = apply_flags(empty_spec(), a.base, seeds=a.seeds)
    return ablation(a.out, names(a.bodies, BODIES, "bodies"), names(a.halts, HALTS, "halts"), spec["base"],
                    spec["seeds"], jobs=a.jobs, windows=a.windows, where=a.where, measure=a.measure, n_boot=a.boot)


def run_iso_flop(a) -> dict:
    from .iso_flop import iso_flop
    try:
        seeds = tuple(int(s) for s in a.seeds.split(",") if s.strip())
    except ValueError:
        seeds = ()
    check_option("--seeds", a.seeds, bool(seeds) and min(seeds) >= 0, "a comma list of integers >= 0, e.g. 0,1,2")
    for flag in ("--looped-steps", "--batch-size", "--eval-points", "--d-model", "--n-head", "--block-size",
                 "--n-layer", "--loops"):
        check_int(flag, getattr(a, flag[2:].replace("-", "_")), 1)
    for flag in ("--n-prelude", "--n-coda"):
        check_int(flag, getattr(a, flag[2:].replace("-", "_")), 0)
    check_float("--lr", a.lr, 0, open_low=True)
    return iso_flop(a.out, a.looped_steps, a.batch_size, a.lr, a.data, seeds, a.eval_points, not a.no_progress,
                    d_model=a.d_model, n_head=a.n_head, block_size=a.block_size, n_prelude=a.n_prelude,
                    n_layer=a.n_layer, n_coda=a.n_coda, loops=a.loops, halt=a.halt)


def main(argv=None) -> int:
    """`python -m gpu.experiments COMMAND [options]`: 0 on success, 2 on bad input, 1 when a sweep cell failed
    (the summary of the others is written), 130 when interrupted (the cells save first; rerun to continue)."""
    ap, sub = command_parser("python -m gpu.experiments", sys.modules[__package__].__doc__)
    iso_flop_args(sub)
    p = grid_args(sub, "sweep", "a grid of settings x seeds, summarized", "runs/sweep")
    p.add_argument("--grid", default=None, help="TOML file: seeds, [base], [settings.NAME], [grid]")
    p.add_argument("--setting", action="append", default=[], metavar="NAME:FIELD=VALUE[,FIELD=VALUE]",
                   help="a named setting (repeatable); NAME: alone is the base")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a grid field and its values (repeatable): the product runs for every setting")
    p = grid_args(sub, "ablation", "block bodies x halting rules, as a sweep", "runs/ablation")
    p.add_argument("--bodies", default="mlp,moe,linear,memory", help="comma list of mlp, moe, linear, memory")
    p.add_argument("--halts", default="fixed,act,exit_gate", help="comma list of halting rules")
    a = ap.parse_args(argv)
    commands = {"iso-flop": run_iso_flop, "sweep": run_sweep, "ablation": run_ablation}
    return print_result(lambda: commands[a.cmd](a))
