"""What a run records as it goes: metrics.jsonl (and TensorBoard scalars on request)."""
from __future__ import annotations

import json
import os
import sys

from reference.files import atomic_write_text


class MetricsLog:
    """metrics.jsonl, one JSON object per line, flushed as written (rank 0 only). A resumed run keeps the records up
    to its checkpoint's step (keep_until_step; 0 = none) and, given `dropped_to`, moves the later ones there."""

    def __init__(self, path, enabled: bool, keep_until_step: int | None = None, dropped_to: str | None = None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and os.path.exists(path):
            kept, dropped = split_records(path, keep_until_step)
            if dropped and dropped_to:
                atomic_write_text(os.path.join(dropped_to, "metrics.jsonl"), "".join(dropped))
            atomic_write_text(path, "".join(kept))
        self.file = open(path, "a") if enabled else None

    def write(self, record: dict):
        if self.file:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as err:  # a full disk names no file of its own
                self.close(quiet=True)
                raise OSError(err.errno, f"could not write {self.path} ({err.strerror})") from None

    def close(self, quiet: bool = False):
        file, self.file = self.file, None
        if file:
            try:
                file.close()
            except OSError as err:
                if not quiet:
                    raise OSError(err.errno, f"could not write {self.path} ({err.strerror})") from None


def split_records(path, keep_until_step: int) -> tuple[list[str], list[str]]:
    """(lines up to the step, later lines) of a metrics.jsonl; a line that is not a JSON record (torn by a kill in
    the middle of a write) is dropped with a notice."""
    kept, dropped = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw.decode("utf-8"))
                step = int(record.get("step", 0))
            except (ValueError, AttributeError, TypeError):
                if raw.strip():
                    print(f"notice: {path} line {number} is not a JSON record (torn write?); dropped", file=sys.stderr)
                continue
            line = raw.decode("utf-8").rstrip("\n") + "\n"
            (kept if step <= keep_until_step else dropped).append(line)
    return kept, dropped


class Recorder:
    """metrics.jsonl and, with --tensorboard, TensorBoard scalars: one `record` call writes both (rank 0 only)."""

    SCALARS = {"train": ("loss", "mean_depth"), "eval": ("val_ce",)}

    def __init__(self, run_dir, enabled: bool, keep_until_step: int | None, tensorboard: bool,
                 dropped_to: str | None = None):
        self.log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), enabled, keep_until_step, dropped_to)
        self.writer = tensorboard_writer(run_dir) if tensorboard and enabled else None

    def record(self, kind: str, step: int, **values):
        self.log.write(dict(type=kind, step=step, **values))
        if self.writer:
            prefix = "train" if kind == "train" else "val"
            for name in self.SCALARS[kind]:
                self.writer.add_scalar(f"{prefix}/{name.removeprefix('val_')}", values[name], step)

    def close(self):
        self.log.close()
        if self.writer:
            self.writer.close()


def tensorboard_writer(run_dir):
    """A TensorBoard SummaryWriter on RUN/tensorboard; ValueError naming the package when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))
