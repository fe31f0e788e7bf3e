"""`run`: one training run, composed of the pieces of this package; `main`: the command line around it."""
from __future__ import annotations

import os
import sys

from ..cli import run_command
from ..config import TrainConfig, parse_command
from .build import build, check_exit_stage2
from .curriculum import Curriculum
from .data import fit_vocab, load_data, training_seq_len
from .device import Dist, device_kind, setup_device
from .loop import Session, train_loop
from .metrics import Recorder
from .report import banner, finish
from .resume import start_state
from .schedule import Schedule, check_schedules
from .rundir import adopt_saved, prepare_run_dir, write_config
from .signals import StopSignals


def run(tc: TrainConfig, mc, explicit_model_fields: set = frozenset(), explicit_train_fields: set | None = None) -> dict:
    """Train; returns the final eval metrics ({} if no eval ran). Raises ValueError / OSError for bad settings or
    files, gpu.train.TrainingDiverged on a non-finite loss or weights (its message names the last good checkpoint),
    and gpu.train.signals.Stopped after saving when SIGTERM or SIGINT asked the run to stop.

    With --resume and `explicit_train_fields` (the command line's flags), the run's saved settings are adopted and
    only those flags applied on top; without (a call from Python), `tc` and `mc` must match the saved ones."""
    dist = Dist(device_kind(tc.device))
    try:
        with StopSignals(announce=dist.main) as stop:
            return _run(tc, mc, set(explicit_model_fields), explicit_train_fields, dist, stop)
    finally:
        dist.close()


def _run(tc: TrainConfig, mc, explicit: set, explicit_train: set | None, dist: Dist, stop: StopSignals) -> dict:
    if tc.resume and explicit_train is not None:
        tc, mc = adopt_saved(tc, mc, explicit_train, explicit)
        explicit = explicit | {"vocab_size"}  # the run's own vocabulary
    device = setup_device(tc.device, tc.threads, dist)
    data = load_data(tc)
    if tc.init_from and not tc.resume:  # the architecture is the file's; flags given change the loop's knobs
        from ..convert import init_config
        base = init_config(tc.init_from)
        mc = base.replace(**{k: getattr(mc, k) for k in explicit})
        explicit = explicit | {"vocab_size"}  # the file's vocabulary: load_init names a mismatch with the data's
    mc = fit_vocab(mc, explicit, int(data["meta"]["vocab_size"]))
    seq_len = training_seq_len(tc, mc)
    check_schedules(tc, mc)
    check_exit_stage2(tc, mc)
    curriculum = Curriculum(tc, data)  # before the run folder: a bad --curriculum leaves nothing behind
    prepare_run_dir(tc, mc, dist)
    start = start_state(tc, mc, dist)
    write_config(tc, mc, dist)
    curriculum.restore((start.saved or {}).get("curriculum"))
    trainee = build(start.params, start.opt_state, mc, tc, device, dist)
    if dist.main:
        print(banner(tc, mc, seq_len, device, dist.world, start.step if start.checkpoint else None), flush=True)
    session = Session(tc, mc, dist, device, data, seq_len, trainee, start.rng, Schedule(tc, mc), curriculum,
                      stop)
    rec = Recorder(tc.out, dist.main, start.step if tc.resume else None, tc.tensorboard, start.set_aside)
    try:
        last_eval = train_loop(session, start.step, rec)
    finally:
        rec.close()
    if dist.main and last_eval is not None:
        finish(tc, mc, data, last_eval, seq_len)
    return last_eval or {}


def main(argv=None) -> int:
    """`python -m gpu.train [--field=value ...]`: 0 when the run finishes; a bad option or value, an unusable data
    folder or run folder: one line on stderr and 2; a diverged run: 1; stopped by SIGINT / SIGTERM (after saving):
    130 / 143 (see gpu.cli)."""
    try:
        tc, mc, explicit, explicit_train = parse_command(argv)
    except SystemExit as done:  # --help (0), or a bad option already reported in one line (2)
        return done.code if isinstance(done.code, int) else 2
    except BrokenPipeError:  # `--help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return run_command(lambda: run(tc, mc, explicit, explicit_train))
