"""`python -m gpu.experiments COMMAND`: experiments that train several runs and compare them in one table.

    iso-flop   a looped model against dense models at equal training FLOPs (iso_flop.py)
    sweep      a grid of settings x training seeds, each cell a `python -m gpu.train` run folder, --jobs processes
               at a time, resumable; then per-seed rows and mean +- sd of val loss, task accuracy, mean depth,
               depth entropy, share at the modal depth and rho(depth, difficulty) with its CI (grid.py, sweep.py,
               summary.py)
    ablation   the block-body x halting grid: {mlp, moe, linear attention, memory} x {fixed, act, exit_gate}, as a
               sweep, with FLOPs per token at the realized depth, tokens/s and depth per loop group (ablation.py)

    python -m gpu.experiments sweep --grid sweep.toml --out runs/sweep --jobs 2
    python -m gpu.experiments sweep --out runs/s --base data=runs/tasks/addition --base max_steps=300 \\
        --set halt=act,exit_gate --seeds 0,1,2
    python -m gpu.experiments ablation --out runs/ablation --base max_steps=300 --jobs 2

Each writes its tables (CSV + Markdown, also printed) and a plot into OUT/analysis/, atomically.
"""
from .ablation import ablation, ablation_spec  # noqa: F401
from .cli import main  # noqa: F401
from .grid import Cell, apply_flags, cell_state, cells, load_spec  # noqa: F401
from .iso_flop import eval_curve, iso_flop, models  # noqa: F401
from .summary import aggregate, depth_stats, summarize_cells  # noqa: F401
from .sweep import CellFailed, sweep  # noqa: F401
