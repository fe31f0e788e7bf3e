"""Training settings and the command line: `--preset`, then `--key=value` for any model or training field."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass

from reference.config import PRESETS, LoopConfig, field_names as model_field_names, get_preset


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a run that is not the architecture."""

    preset: str = "tiny"            # model preset; any LoopConfig field can be overridden on top
    data: str = "bundled"           # 'bundled' (the topic corpus shipped with adaloop) or a folder of shards
    out: str = "runs/tiny"          # run folder: config.json, metrics.jsonl, checkpoints, report.md
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    dtype: str = "float32"          # float32 | bfloat16 (autocast; weights stay float32) | float64
    compile: bool = False           # torch.compile the model (CUDA; fixed depth compiles without graph breaks)
    threads: int = 0                # CPU threads for torch; 0 = all cores but one (a busy core stalls every op)
    batch_size: int = 16            # sequences per optimizer step and process, before accumulation
    seq_len: int = 0                # 0 = the model's block_size
    grad_accum: int = 1             # micro-batches per optimizer step
    max_steps: int = 800
    lr: float = 3e-3
    min_lr_ratio: float = 0.1       # cosine decays to min_lr_ratio * lr
    warmup: int = 40
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # 0 disables clipping
    eval_every: int = 200
    eval_batches: int = 8
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 2              # checkpoints kept on disk
    collapse_patience: int = 3      # evals in a row with halting at one end before the warning
    seed: int = 0
    random_loops: bool = False      # halt=fixed: draw the loop count of each step uniformly from min..max_loops
    ignore_topics: str = ""         # comma list of topic names whose targets the loss skips (tasks: "prompt")
    fsdp: bool = False              # with torchrun: shard parameters with FSDP instead of DDP
    tensorboard: bool = False       # also write TensorBoard scalars (needs the tensorboard package)
    resume: bool = False            # continue the run in `out` from its last checkpoint
    progress: bool = True           # tqdm progress bar

    def __post_init__(self):
        _check_types(self, "TrainConfig")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches", "log_every",
                     "ckpt_every", "keep_last", "collapse_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} is invalid: expected an int >= 1")
        if self.seq_len < 0 or self.warmup < 0 or self.threads < 0:
            raise ValueError("TrainConfig.seq_len, warmup and threads must be >= 0")
        if self.dtype not in ("float32", "bfloat16", "float64"):
            raise ValueError(f"TrainConfig.dtype={self.dtype!r} is invalid: expected float32, bfloat16 or float64")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields that may differ when resuming: they change how a run is watched, not what it computes.
RESUMABLE_CHANGES = {"out", "device", "compile", "threads", "max_steps", "eval_every", "log_every", "ckpt_every", "keep_last",
                     "collapse_patience", "tensorboard", "resume", "progress", "eval_batches"}


def _check_types(obj, label):
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v, t = getattr(obj, f.name), hints[f.name]
        ok = isinstance(v, bool) if t is bool else (not isinstance(v, bool) and isinstance(v, (int, float) if t is float else t))
        if not ok:
            raise ValueError(f"{label}.{f.name}={v!r} is invalid: expected {t.__name__}")


def _parse_value(text: str, kind, name: str):
    """Type-checked conversion of a command-line string to a field's type."""
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{name}={text!r}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--{name}={text!r}: expected {kind.__name__}") from None


def _flags(name):
    """--max-steps and --max_steps both work."""
    dashed = name.replace("_", "-")
    return [f"--{dashed}"] + ([f"--{name}"] if dashed != name else [])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gpu.train",
        description="Train an adaptive looped transformer. Every field below takes --field=value "
                    "(dashes or underscores). Model fields override the preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train_hints = typing.get_type_hints(TrainConfig)
    tg = ap.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        tg.add_argument(*_flags(f.name), dest=f.name, default=f.default, metavar=train_hints[f.name].__name__.upper(),
                        help=f"(default {f.default!r})")
    mg = ap.add_argument_group("model (LoopConfig; default: the preset's value, shown for 'tiny')")
    model_hints = typing.get_type_hints(LoopConfig)
    tiny = PRESETS["tiny"]
    for name in model_field_names():
        mg.add_argument(*_flags(name), dest=f"model.{name}", default=None,
                        metavar=model_hints[name].__name__.upper(), help=f"(tiny: {getattr(tiny, name)!r})")
    return ap


def parse_args(argv=None) -> tuple[TrainConfig, LoopConfig, set[str]]:
    """(train config, model config, names of model fields set on the command line)."""
    ap = build_parser()
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(TrainConfig)) + model_field_names()
        ap.error(f"unknown option(s) {unknown}; known fields: {', '.join(known)}")
    ns = vars(args)
    train_hints = typing.get_type_hints(TrainConfig)
    try:
        train_kw = {k: _parse_value(v, train_hints[k], k) if isinstance(v, str) and train_hints[k] is not str else v
                    for k, v in ns.items() if not k.startswith("model.")}
        model_hints = typing.get_type_hints(LoopConfig)
        overrides = {k[6:]: _parse_value(v, model_hints[k[6:]], k[6:]) for k, v in ns.items()
                     if k.startswith("model.") and v is not None}
        tc = TrainConfig(**train_kw)
        mc = get_preset(tc.preset, **overrides)
    except ValueError as err:
        ap.error(str(err))
    return tc, mc, set(overrides)
