"""`python -m gpu.train`: train an adaptive looped transformer and write a run folder.

With no arguments: the `tiny` looped ACT model on the bundled topic corpus, on the CPU, in a few minutes.
`--preset looped-100m --device cuda --dtype bfloat16 --compile` is the 100M run on one GPU;
`torchrun --nproc_per_node=N -m gpu.train ...` runs it data-parallel (DDP, or FSDP with --fsdp).
`python -m gpu.train --help` lists every field with its default.

run folder (--out): config.json, metrics.jsonl, checkpoints/step-*/, report.md (+ depth_hist.png)

One module per concern: `device` (process group, device, threads, autocast), `data` (splits, scored targets,
batches), `build` (model and optimizer), `distributed` (DDP/FSDP), `rundir` (the run folder: refusal, --overwrite,
adopting saved settings on --resume), `resume` (start state, checkpoint fall-back, saving), `loop` (the steps),
`schedule` (per-step depth and halt-penalty warm-ups, random depth),
`signals` (SIGTERM/SIGINT: finish the step, save, stop), `progress` (bar or plain lines), `evaluate`, `metrics`
(metrics.jsonl, TensorBoard), `report` (report.md), and `runner`, which composes them (`run`) and wraps them in
the command line (`main`).
"""
from ..config import TrainConfig, parse_args  # noqa: F401
from .build import make_optimizer  # noqa: F401
from .data import fit_vocab, ignored_topic_ids, load_data, mask_targets, sample_global_batch, scored_tokens  # noqa: F401
from .device import Dist, cpu_threads, resolve_device  # noqa: F401
from .evaluate import evaluate  # noqa: F401
from .resume import TrainingDiverged  # noqa: F401
from .rundir import check_resumable  # noqa: F401
from .runner import main, run  # noqa: F401
from .signals import Stopped  # noqa: F401
