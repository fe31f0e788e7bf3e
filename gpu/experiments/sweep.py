"""`python -m gpu.experiments sweep`: train every cell of a grid (gpu/experiments/grid.py) as its own
`python -m gpu.train` process, --jobs at a time with one thread each, then summarize them (summary.py).

Resumable: a finished cell (its last eval and checkpoint at max_steps) is skipped; a started one is continued with
--resume (from its newest intact checkpoint, or from step 0 when it was killed before its first); one whose
checkpoints are all damaged is restarted with --overwrite. A cell that fails is reported with its log
(OUT/logs/NAME-seedS.log) and left out of the summary; the others go on. SIGINT / SIGTERM stop the sweep: every
running cell finishes its step, writes a checkpoint and exits (gpu.train's signal handling), so running the same
command again continues where it stopped.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from reference.files import atomic_write_json

from .grid import Cell, cell_state, cells, safe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds the gpu package


class CellFailed(RuntimeError):
    """One or more cells failed; the summary of the others was written. An entry point exits with status 1."""

    exit_code = 1


class Pool:
    """The cells' processes: started --jobs at a time; `stop` sends each running one SIGTERM (it saves and exits)."""

    def __init__(self, jobs: int, out: str, say):
        self.jobs, self.logs, self.say = jobs, os.path.join(out, "logs"), say
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def train(self, cell: Cell, state: str) -> tuple[int, str]:
        """Run one cell to its end (resuming or restarting it as `state` says); (exit status, log path)."""
        os.makedirs(self.logs, exist_ok=True)
        log = os.path.join(self.logs, f"{safe(cell.setting)}-seed{cell.seed}.log")
        extra = {"partial": ["--resume"], "broken": ["--overwrite"]}.get(state, [])
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        with self.lock:
            if self.stopping:
                return 143, log
            with open(log, "a") as f:
                f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} sweep: {cell.name} ({state})\n")
                f.flush()
                proc = subprocess.Popen([sys.executable, "-m", "gpu.train", *cell.argv(), *extra], stdout=f,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.running.add(proc)
        self.say(f"sweep: {cell.name}: {'training' if state == 'new' else state + ', continuing'} (log {log})")
        code = proc.wait()
        with self.lock:
            self.running.discard(proc)
        return code, log

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.running:
                proc.send_signal(signal.SIGTERM)


def last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def train_cells(grid: list[Cell], jobs: int, out: str, say=print) -> dict[str, str]:
    """Train every unfinished cell; returns the failures, cell name -> one line (status, the log's last line).
    SIGTERM to the sweep stops it like Ctrl-C (each running cell saves first)."""
    with sigterm_interrupts():
        return _train_cells(grid, jobs, out, say)


@contextlib.contextmanager
def sigterm_interrupts():
    """Within: SIGTERM raises KeyboardInterrupt in the main thread (so the cells are stopped, not orphaned)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def interrupt(signum, frame):  # noqa: E306
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _train_cells(grid: list[Cell], jobs: int, out: str, say) -> dict[str, str]:
    todo = []
    for cell in grid:
        state = cell_state(cell)
        if state == "done":
            say(f"sweep: {cell.name}: finished, skipped")
        else:
            todo.append((cell, state))
    pool, failures = Pool(jobs, out, say), {}
    executor = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [(cell, executor.submit(pool.train, cell, state)) for cell, state in todo]
        for cell, future in futures:
            while True:  # a timeout keeps the main thread responsive to Ctrl-C
                try:
                    code, log = future.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
            if code != 0:
                failures[cell.name] = f"{cell.name} exited {code}: {last_line(log)} (log {log})"
            else:
                say(f"sweep: {cell.name}: done")
    except BaseException:
        pool.stop()  # each running cell saves a checkpoint and exits; the same command continues the sweep
        raise
    finally:
        executor.shutdown(wait=True)
    return failures


def sweep(spec: dict, out: str, jobs: int = 1, windows: int = 256, where: str | None = None,
          measure: str | None = None, n_boot: int = 200, say=print, columns=None, name: str = "sweep",
          note: str = "") -> dict:
    """Train the grid's cells (skipping finished ones) and write the summary OUT/analysis/NAME.{csv,md,png} (+
    NAME_summary.csv). Returns dict(rows, summary, md, paths); raises CellFailed after writing the summary of the
    others when a cell failed."""
    from .summary import summarize_cells
    if jobs < 1:
        raise ValueError(f"--jobs={jobs}: expected an int >= 1")
    grid = cells(spec, out)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{name}.json"), spec)  # what this sweep is, for the record
    failures = train_cells(grid, jobs, out, say)
    done = [c for c in grid if c.name not in failures]
    result = summarize_cells(done, out, windows=windows, where=where, measure=measure, n_boot=n_boot,
                             columns=columns, name=name, note=note)
    if failures:
        raise CellFailed(f"{len(failures)} of {len(grid)} cells failed (the summary covers the others): "
                         + "; ".join(failures.values()))
    return result
