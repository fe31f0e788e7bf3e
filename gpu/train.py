"""`python -m gpu.train`: train an adaptive looped transformer and write a run folder.

With no arguments: the `tiny` looped ACT model on the bundled topic corpus, on the CPU, in a few minutes.
`--preset looped-100m --device cuda --dtype bfloat16 --compile true` is the 100M run on one GPU;
`torchrun --nproc_per_node=N -m gpu.train ...` runs it data-parallel (DDP, or FSDP with --fsdp true).

run folder (--out): config.json, metrics.jsonl, checkpoints/step-*/, report.md (+ depth_hist.png)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

import reference
from reference.accounting import flops_per_token, param_counts
from reference.train import unigram_loss
from reference.files import atomic_write_bytes

from . import checkpoint as ckpt
from .config import RESUMABLE_CHANGES, TrainConfig, parse_args
from .diagnostics import collapsed, depth_by_topic, halting_stats, token_depth
from .model import from_reference
from .report import write_report


# ----------------------------------------------------------------------------- process group
class Dist:
    """rank / world size from torchrun's environment; a single process otherwise."""

    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            torch.distributed.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def close(self):
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def cpu_threads(requested: int, world: int) -> int:
    """Intra-op threads per process on the CPU. Auto leaves one core free: when every core runs one of torch's
    threads and another process takes a core, each parallel op waits for the descheduled thread, and a step
    measured at 36 ms became 3.5 s on a 2-core machine (docs/benchmarks.md)."""
    if requested:
        return requested
    return max(1, ((os.cpu_count() or 1) - 1) // world)


def resolve_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device={name} but torch sees no CUDA device: use --device=cpu or install a CUDA "
                             f"build of torch (see README)")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
    elif name != "cpu":
        raise ValueError(f"--device={name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


# ----------------------------------------------------------------------------- run setup
def load_data(tc: TrainConfig):
    from .data import BUNDLED_DIR, load_split, topic_names
    data_dir = BUNDLED_DIR if tc.data == "bundled" else tc.data
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data={tc.data!r} is not a folder: use 'bundled' or a folder made by "
                         f"`python -m gpu.data openwebtext --out DIR`")
    train, train_topics, meta = load_split(data_dir, "train")
    val, val_topics, _ = load_split(data_dir, "val")
    topics = topic_names(data_dir)
    return dict(train=train, train_topics=train_topics, val=val, val_topics=val_topics, meta=meta,
                topics=topics, ignore_ids=ignored_topic_ids(tc.ignore_topics, topics, data_dir))


def ignored_topic_ids(spec: str, topics: list[str], data_dir) -> np.ndarray:
    """Topic ids named by --ignore-topics (comma list); ValueError naming an unknown topic."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names and not topics:
        raise ValueError(f"--ignore-topics={spec!r}: the data folder {data_dir!r} has no topic labels; drop the option")
    unknown = [n for n in names if n not in topics]
    if unknown:
        raise ValueError(f"--ignore-topics: {unknown} are not topics of {data_dir!r}; its topics are {topics}")
    return np.array([topics.index(n) for n in names], dtype=np.int64)


def scored_tokens(data, split) -> np.ndarray:
    """The tokens of a split that the loss scores as targets (all, unless --ignore-topics drops some)."""
    tokens, topics = np.asarray(data[split]), data[f"{split}_topics"]
    if topics is None or len(data["ignore_ids"]) == 0:
        return tokens
    return tokens[~np.isin(np.asarray(topics), data["ignore_ids"])]  # stays uint16: no -1 to write into it


def mask_targets(y: np.ndarray, topic, ignore_ids: np.ndarray) -> np.ndarray:
    """y (signed ints) with the targets whose topic is ignored set to -1 (the loss's ignore index). (B, T)"""
    if topic is None or len(ignore_ids) == 0:
        return y
    return np.where(np.isin(topic, ignore_ids), -1, y)


def fit_vocab(mc, explicit: set, data_vocab: int):
    """The model's vocabulary follows the tokenizer unless set on the command line; then it must cover it."""
    if "vocab_size" not in explicit:
        return mc.replace(vocab_size=data_vocab)
    if mc.vocab_size < data_vocab:
        raise ValueError(f"--vocab-size={mc.vocab_size} is smaller than the tokenizer's vocabulary ({data_vocab}): "
                         f"drop --vocab-size to use the tokenizer's, or set it >= {data_vocab}")
    return mc


def check_resumable(run_dir, tc: TrainConfig, mc) -> None:
    """A resumed run must compute the same thing: same model config, same training fields except RESUMABLE_CHANGES."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {run_dir!r} holds no run (no config.json); drop --resume to start one")
    with open(path) as f:
        saved = json.load(f)
    problems = [f"{k}: run has {v!r}, now {getattr(mc, k)!r}" for k, v in saved["model"].items() if getattr(mc, k) != v]
    problems += [f"{k}: run has {v!r}, now {getattr(tc, k)!r}" for k, v in saved["train"].items()
                 if k not in RESUMABLE_CHANGES and getattr(tc, k) != v]
    if problems:
        raise ValueError("--resume with an incompatible config: " + "; ".join(problems)
                         + ". Resume with the run's settings or start a new run in another --out folder.")


def make_optimizer(module, tc: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (as reference.optim.AdamW); fused kernels on CUDA."""
    decay = [p for p in module.parameters() if p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.ndim < 2]
    groups = [dict(params=decay, weight_decay=tc.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    extra = dict(fused=True) if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8, **extra)


def sample_global_batch(data, split, batch: int, seq_len: int, rng, dist: Dist):
    """Every rank draws the same global batch from the shared rng and keeps its own rows, so N processes see
    exactly the data one process with N times the batch would see."""
    from .data import sample_batch
    x, y, topic = sample_batch(data[split], data[f"{split}_topics"], batch * dist.world, seq_len, rng)
    y = mask_targets(y, topic, data["ignore_ids"])
    rows = slice(dist.rank * batch, (dist.rank + 1) * batch)
    return x[rows], y[rows], (None if topic is None else topic[rows])


def autocast(tc: TrainConfig, device):
    if tc.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, mc, tc: TrainConfig, data, device, seq_len) -> dict:
    """Validation cross-entropy and halting diagnostics on a fixed set of validation batches."""
    from .data import fixed_windows
    model.eval()
    # the same evenly spaced windows over the whole validation split at every eval
    X, Y, TOPIC = fixed_windows(data["val"], data["val_topics"], tc.eval_batches * tc.batch_size, seq_len)
    Y = mask_targets(Y, TOPIC, data["ignore_ids"])
    ces, n_scored, losses, auxes, depths, topics = [], [], [], [], [], []
    for i in range(tc.eval_batches):
        rows = slice(i * tc.batch_size, (i + 1) * tc.batch_size)
        x, y, topic = X[rows], Y[rows], (None if TOPIC is None else TOPIC[rows])
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast(tc, device):
            logits, loss, aux = model(xt, yt)
        ces.append(float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), ignore_index=-1,
                                                           reduction="sum")))
        n_scored.append(int((yt >= 0).sum()))
        losses.append(float(loss))
        auxes.append({k: v.detach().cpu() for k, v in aux.items()})
        depths.append(token_depth(aux))
        if topic is not None:
            topics.append(topic)
    model.train()
    merged = {k: torch.cat([a[k] for a in auxes]) for k in auxes[0]}
    out = dict(val_ce=sum(ces) / sum(n_scored), val_loss=float(np.mean(losses)), **halting_stats(merged, mc))
    if topics:
        out["depth_by_topic"] = depth_by_topic(np.concatenate(depths), np.concatenate(topics), data["topics"])
    return out


# ----------------------------------------------------------------------------- the loop
class MetricsLog:
    """metrics.jsonl, one JSON object per line, flushed as written (rank 0 only)."""

    def __init__(self, path, enabled: bool, keep_until_step: int | None = None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and os.path.exists(path):
            # a resumed run drops what was logged after its checkpoint: it is about to be recomputed
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
            atomic_write_bytes(path, "".join(kept).encode())
        self.file = open(path, "a") if enabled else None

    def write(self, record: dict):
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def run(tc: TrainConfig, mc, explicit_model_fields: set = frozenset()) -> dict:
    """Train; returns the final eval metrics. Raises ValueError for bad settings, SystemExit(1) on a
    non-finite loss (after saying which checkpoint is the last good one)."""
    device_kind = "cuda" if tc.device.startswith("cuda") or (tc.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = Dist(device_kind)
    try:
        return _run(tc, mc, explicit_model_fields, dist)
    finally:
        dist.close()


def _run(tc: TrainConfig, mc, explicit, dist: Dist) -> dict:
    device = resolve_device(tc.device, dist)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(tc.threads, dist.world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = load_data(tc)
    mc = fit_vocab(mc, explicit, int(data["meta"]["vocab_size"]))
    seq_len = tc.seq_len or mc.block_size
    if seq_len > mc.block_size:
        raise ValueError(f"--seq-len={seq_len} exceeds the model's block_size={mc.block_size}: lower --seq-len "
                         f"or raise --block-size")
    if tc.random_loops and mc.halt != "fixed":
        raise ValueError(f"--random-loops needs --halt=fixed (halt={mc.halt!r} already chooses each token's depth)")
    run_dir = tc.out
    if tc.resume:
        check_resumable(run_dir, tc, mc)
    elif dist.main and ckpt.latest_checkpoint(run_dir):
        raise ValueError(f"{run_dir!r} already holds a run with checkpoints: pass --resume true to continue it, or "
                         f"choose another --out")
    if dist.main:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_bytes(os.path.join(run_dir, "config.json"),
                           json.dumps(dict(model=mc.to_dict(), train=tc.to_dict()), indent=2).encode())

    # model and optimizer: initialised by the reference, so both backends start from the same weights
    param_dtype = torch.float64 if tc.dtype == "float64" else torch.float32
    start_step, rng = 0, np.random.default_rng(tc.seed)
    resume_from = ckpt.latest_checkpoint(run_dir) if tc.resume else None
    if resume_from:
        params, _, opt_state, state = ckpt.load_checkpoint(resume_from, mc)
        start_step = state["step"]
        rng.bit_generator.state = state["rng"]
    else:
        params = reference.init_params(mc, tc.seed, "float32")
    model = from_reference(params, mc).to(device=device, dtype=param_dtype)
    raw_model = model
    if dist.enabled:
        model = wrap_distributed(model, tc, device)
    optimizer = make_optimizer(model, tc, device)  # after FSDP has replaced the parameters by shards
    if resume_from:
        load_optimizer_state(model, optimizer, opt_state, tc, dist)
    if tc.compile:
        model = torch.compile(model)

    counts = param_counts(mc)
    if dist.main:
        print(f"adaloop: {tc.preset} halt={mc.halt} scope={mc.loop_scope} max_loops={mc.max_loops} | "
              f"{counts['unique'] / 1e6:.2f}M params ({counts['non_embedding'] / 1e6:.2f}M non-embedding) | "
              f"{flops_per_token(mc, seq_len=seq_len) / 1e6:.1f} MFLOP/token (train, full depth) | "
              f"device={device} dtype={tc.dtype} world={dist.world}"
              + (f" | resuming at step {start_step}" if resume_from else ""))
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), dist.main, start_step if resume_from else None)
    writer = tensorboard_writer(run_dir) if tc.tensorboard and dist.main else None

    from tqdm import tqdm
    from reference.optim import lr_at
    bar = tqdm(range(start_step, tc.max_steps), initial=start_step, total=tc.max_steps, desc="train",
               disable=not (tc.progress and dist.main), unit="step", dynamic_ncols=True)
    tokens_per_step = tc.batch_size * seq_len * tc.grad_accum * dist.world
    collapse_streak, last_eval, t0, window_start = 0, None, time.time(), start_step
    model.train()
    for step in bar:
        lr = lr_at(step, tc.lr, tc.warmup, tc.max_steps, tc.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, depth_sum = 0.0, 0.0
        # --random-loops: one depth per optimizer step from the shared rng (the same on every rank; resumes exactly)
        loops = int(rng.integers(mc.min_loops, mc.max_loops + 1)) if tc.random_loops else None
        for micro in range(tc.grad_accum):
            x, y, _ = sample_global_batch(data, "train", tc.batch_size, seq_len, rng, dist)
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            accumulate_locally = dist.enabled and not tc.fsdp and micro < tc.grad_accum - 1
            with (model.no_sync() if accumulate_locally else contextlib.nullcontext()), autocast(tc, device):
                _, loss, aux = model(xt, yt, loops=loops)
                (loss / tc.grad_accum).backward()
            loss_sum += float(loss.detach()) / tc.grad_accum
            depth_sum += float(aux["n_steps"].float().mean()) / tc.grad_accum
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        train_loss = dist.mean(loss_sum)
        if not math.isfinite(train_loss):
            last = ckpt.latest_checkpoint(run_dir)
            msg = (f"loss became {train_loss} at step {step}; stopping without saving. Last good checkpoint: "
                   f"{last or 'none'}. Try a lower --lr, --grad-clip=1, --dtype=float32, or a larger "
                   f"--step-scale-init/--halt-penalty balance.")
            print(msg, file=sys.stderr)
            log.close()
            raise SystemExit(1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        depth = dist.mean(depth_sum)
        if dist.main and (done % tc.log_every == 0 or done == tc.max_steps):
            tok_s = (done - window_start) * tokens_per_step / max(time.time() - t0, 1e-9)
            log.write(dict(type="train", step=done, loss=train_loss, lr=lr, mean_depth=depth, tokens_per_s=tok_s))
            if writer:
                writer.add_scalar("train/loss", train_loss, done)
                writer.add_scalar("train/mean_depth", depth, done)
        bar.set_postfix(loss=f"{train_loss:.3f}", depth=f"{depth:.2f}",
                        tok_s=f"{(done - window_start) * tokens_per_step / max(time.time() - t0, 1e-9):.0f}")
        if done % tc.eval_every == 0 or done == tc.max_steps:
            last_eval = evaluate(model, mc, tc, data, device, seq_len)
            if dist.main:
                log.write(dict(type="eval", step=done, **last_eval))
                if writer:
                    writer.add_scalar("val/ce", last_eval["val_ce"], done)
                end = collapsed(last_eval, mc)
                collapse_streak = collapse_streak + 1 if end else 0
                if collapse_streak >= tc.collapse_patience:
                    bar.write(f"warning: halting has collapsed: >=95% of tokens stop at {end} for {collapse_streak} "
                              f"evals in a row. Adjust --halt-penalty (lower if stuck at min) or --halt-bias-init.")
                bar.write(f"step {done}: val ce {last_eval['val_ce']:.4f} | mean depth {last_eval['mean_depth']:.2f} "
                          f"| depth histogram {last_eval['depth_hist']}")
        if done % tc.ckpt_every == 0 or done == tc.max_steps:
            save(raw_model, model, mc, optimizer, rng, tc, run_dir, done, dist)
    bar.close()
    log.close()
    if writer:
        writer.close()
    if dist.main and last_eval is not None:
        baseline = unigram_loss(*(scored_tokens(data, split) for split in ("train", "val")), mc.vocab_size)
        write_report(run_dir, mc, tc, last_eval, baseline, counts, flops_per_token(mc, last_eval["mean_depth"], seq_len))
        print(f"val ce {last_eval['val_ce']:.4f} nats/token (unigram baseline {baseline:.4f}) | mean depth "
              f"{last_eval['mean_depth']:.2f} | report: {os.path.join(run_dir, 'report.md')}")
    return last_eval or {}


def save(raw_model, model, mc, optimizer, rng, tc, run_dir, step, dist: Dist):
    """Rank 0 writes the checkpoint (FSDP gathers the full state on every rank first)."""
    if tc.fsdp and dist.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
        params = {k: v.float().numpy() if v.dtype != torch.float64 else v.numpy() for k, v in model_sd.items()}
    else:
        params, optim_sd = raw_model.to_reference(), optimizer.state_dict()
    if dist.main:
        ckpt.save_checkpoint(run_dir, step, params, mc, optim_sd, dict(rng=rng.bit_generator.state), tc.keep_last)
    if dist.enabled:
        torch.distributed.barrier()


def load_optimizer_state(model, optimizer, opt_state, tc, dist: Dist):
    if tc.fsdp and dist.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, opt_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(opt_state)


def wrap_distributed(model, tc: TrainConfig, device):
    if tc.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in [*model.prelude, *model.core, *model.coda]:  # shard block by block, then the rest
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def tensorboard_writer(run_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def main(argv=None):
    tc, mc, explicit = parse_args(argv)
    try:
        run(tc, mc, explicit)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
