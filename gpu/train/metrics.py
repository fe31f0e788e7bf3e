"""What a run records as it goes: metrics.jsonl (and TensorBoard scalars on request)."""
from __future__ import annotations

import json
import os

from reference.files import atomic_write_text


class MetricsLog:
    """metrics.jsonl, one JSON object per line, flushed as written (rank 0 only)."""

    def __init__(self, path, enabled: bool, keep_until_step: int | None = None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and os.path.exists(path):
            # a resumed run drops what was logged after its checkpoint: it is about to be recomputed
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
            atomic_write_text(path, "".join(kept))
        self.file = open(path, "a") if enabled else None

    def write(self, record: dict):
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()
            self.file = None


class Recorder:
    """metrics.jsonl and, with --tensorboard, TensorBoard scalars: one `record` call writes both (rank 0 only)."""

    SCALARS = {"train": ("loss", "mean_depth"), "eval": ("val_ce",)}

    def __init__(self, run_dir, enabled: bool, keep_until_step: int | None, tensorboard: bool):
        self.log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), enabled, keep_until_step)
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
