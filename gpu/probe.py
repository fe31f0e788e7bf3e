"""Open a trained run and measure it token by token on held-out windows (what every gpu.analyze command needs).

    run = load_run("runs/tiny")                                   # params of the newest checkpoint, config, data folder
    ev = eval_windows(run.data_dir, "val", n=256, seq_len=run.cfg.block_size)
    out = collect(run.params, run.cfg, ev.x, ev.y)                # per-token depth, loss, correctness, halting

`with_loops(cfg, k)` / `with_halting(cfg, ...)` re-run the same weights at another depth or threshold: the
parameters do not depend on max_loops (reference.model.param_shapes), so a forced depth k is just another config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from reference.config import LoopConfig
from reference.model import param_shapes

from .diagnostics import token_depth


@dataclass
class Run:
    path: str
    params: dict          # name -> float32 numpy array (the newest checkpoint)
    cfg: LoopConfig
    train: dict           # the run's TrainConfig as a dict
    step: int
    checkpoint: str
    data_dir: str


def resolve_data(data: str) -> str:
    """A --data value as a folder: 'bundled' names the corpus shipped in gpu/data/bundled."""
    from .data import BUNDLED_DIR
    return BUNDLED_DIR if data == "bundled" else data


def load_run(run_dir, data: str | None = None) -> Run:
    """The newest checkpoint of a run folder written by `python -m gpu.train`. ValueError naming the fix for a
    missing folder, a folder that is not a run, a run without checkpoints or a data folder that moved."""
    from .checkpoint import latest_checkpoint, load_checkpoint
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ValueError(f"run folder {run_dir!r} does not exist: train one with `python -m gpu.train --out {run_dir}`")
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{run_dir!r} is not a run folder (no config.json): pass the --out folder of a "
                         f"`python -m gpu.train` run")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"run {run_dir!r} has no checkpoint yet: let it reach --ckpt-every steps (or its end), "
                         f"or resume it with `python -m gpu.train --out {run_dir} --resume`")
    with open(cfg_path) as f:
        saved = json.load(f)
    params, cfg, _, state = load_checkpoint(ckpt)
    data_dir = resolve_data(data or saved["train"]["data"])
    if not os.path.isfile(os.path.join(data_dir, "manifest.json")):
        raise ValueError(f"the run's data folder {data_dir!r} is missing: pass --data DIR (the folder it was "
                         f"trained on, or one with the same tokenizer)")
    return Run(run_dir, params, cfg, saved["train"], int(state["step"]), ckpt, data_dir)


# ----------------------------------------------------------------------------- configs for re-runs
def with_loops(cfg: LoopConfig, k: int) -> LoopConfig:
    """Forced depth: every token runs exactly k loop steps (fixed halting, output = the k-th state)."""
    return cfg.replace(halt="fixed", max_loops=k, min_loops=min(cfg.min_loops, k))


def with_halting(cfg: LoopConfig, max_loops: int | None = None, **changes) -> LoopConfig:
    """The trained halting rule with another threshold (act_eps, converge_tol) and/or a larger max_loops."""
    k = max_loops or cfg.max_loops
    return cfg.replace(max_loops=k, min_loops=min(cfg.min_loops, k), **changes)


def params_for(params: dict, cfg: LoopConfig) -> dict:
    """The subset of a run's params that `cfg` uses (a forced-depth config has no halting unit)."""
    names = param_shapes(cfg)
    return {k: v for k, v in params.items() if k in names}


# ----------------------------------------------------------------------------- held-out windows
@dataclass
class Windows:
    x: np.ndarray                # (W, T) int64 input tokens
    y: np.ndarray                # (W, T) int64 targets
    label: np.ndarray | None     # (W, T) int64 label ("topic") id of each target, None if the folder has none
    names: list[str]             # label id -> name
    measures: dict               # measure name -> (W, T) int64 difficulty of each target (synthetic tasks)
    eot_id: int
    task: dict | None            # the manifest's task entry (synthetic folders), else None

    @property
    def answer(self) -> np.ndarray:
        """(W, T) bool: targets that are answer tokens of a synthetic task (all True for other data)."""
        if not self.task:
            return np.ones(self.y.shape, bool)
        return self.measures[self.task["label_measure"]] != self.task["na"]

    def problem_ids(self) -> np.ndarray:
        """(W, T) int: which problem (document) of the window each target belongs to, 0 = the first; a
        document's end-of-text token belongs to it."""
        is_end = self.y == self.eot_id
        return np.cumsum(is_end, axis=1) - is_end

    def complete(self) -> np.ndarray:
        """(W, T) bool: the target's document ends inside the window (its end-of-text is a target)."""
        pid = self.problem_ids()
        n_done = (self.y == self.eot_id).sum(axis=1, keepdims=True)
        return pid < n_done


def eval_windows(data_dir, split: str, n: int, seq_len: int) -> Windows:
    """n evenly spaced windows over a split (gpu.data.fixed_windows). In a synthetic task folder every window
    starts at a document start, so each answer in it has its whole prompt in context."""
    from .data import load_split
    from .tasks import load_measures
    tokens, topics, meta = load_split(data_dir, split)
    N = len(tokens)
    if N <= seq_len:
        raise ValueError(f"{data_dir} {split} has {N} tokens, too few for windows of {seq_len}")
    if meta.get("task"):
        starts = np.r_[0, np.flatnonzero(np.asarray(tokens[:-1]) == meta["eot_id"]) + 1]
        starts = starts[starts + seq_len + 1 <= N]
        starts = np.unique(starts[np.linspace(0, len(starts) - 1, n).astype(np.int64)])
    else:
        starts = np.unique(np.linspace(0, N - seq_len - 1, n).astype(np.int64))
    idx = starts[:, None] + np.arange(seq_len + 1)  # (W, T+1)
    w = np.asarray(tokens[idx], dtype=np.int64)
    label = None if topics is None else np.asarray(topics[idx[:, 1:]], dtype=np.int64)
    measures = {k: np.asarray(v[idx[:, 1:]], dtype=np.int64) for k, v in load_measures(data_dir, split).items()}
    return Windows(w[:, :-1], w[:, 1:], label, list(meta.get("topics") or []), measures, int(meta["eot_id"]),
                   meta.get("task"))


# ----------------------------------------------------------------------------- forward passes
@torch.no_grad()
def collect(params: dict, cfg: LoopConfig, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 32,
            keep: tuple = ("weights", "deltas"), progress: bool = False, desc: str = "forward") -> dict:
    """Run the model (torch, float32, CPU) over windows x (W, T) and return per-token numpy arrays:
    depth (W, T) realized loop steps averaged over groups, n_steps (W, T, G), ponder (W, T) the ponder cost
    averaged over groups (ACT: N + R, Graves 2016 eq. 13; PonderNet: E[n]; otherwise N), and with targets y:
    loss (W, T) cross-entropy in nats, correct (W, T) argmax == target; plus the aux keys in `keep`
    (weights, deltas, halt_probs: (W, T, G, K))."""
    from tqdm import tqdm

    from .model import from_reference
    model = from_reference(params_for(params, cfg), cfg, dtype=torch.float32).eval()
    parts = []
    starts = range(0, len(x), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False, dynamic_ncols=True):
        xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size]))
        logits, _, aux = model(xb)
        part = dict(n_steps=aux["n_steps"].numpy(), depth=token_depth(aux),
                    ponder=aux["ponder_cost"].float().numpy().mean(axis=-1))
        for k in keep:
            part[k] = aux[k].float().numpy()
        if y is not None:
            yb = torch.from_numpy(np.ascontiguousarray(y[s:s + batch_size]))
            part["loss"] = torch.nn.functional.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                                             reduction="none").view(yb.shape).numpy()
            part["correct"] = (logits.argmax(-1) == yb).numpy()
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
