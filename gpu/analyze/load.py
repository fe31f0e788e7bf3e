"""What the window-based analyses share: open a run with its held-out windows, and score a forward pass over them
(mean loss, accuracy and depth; for synthetic tasks the answer tokens and exact match of whole answers).
Opening a run and collecting per-token outputs live in gpu.probe."""
from __future__ import annotations

import numpy as np

from ..probe import eval_windows, load_run


def setup(run_dir, data: str | None, split: str, windows: int):
    """(run, windows): the newest checkpoint of run_dir (gpu.probe.load_run) and `windows` evenly spaced held-out
    windows of block_size tokens from `split` of its data folder (or of `data`)."""
    run = load_run(run_dir, data)
    return run, eval_windows(run.data_dir, split, windows, run.cfg.block_size)


def summarize(out: dict, ev) -> dict:
    """Mean loss, accuracy and depth over all targets; for synthetic tasks also over the answer tokens and the
    exact-match rate of whole answers (every answer token argmax-correct = greedy decoding gets it right)."""
    r = dict(mean_depth=float(out["depth"].mean()), loss=float(out["loss"].mean()), acc=float(out["correct"].mean()))
    if ev.task:
        ans = ev.answer
        r.update(answer_depth=float(out["depth"][ans].mean()), answer_loss=float(out["loss"][ans].mean()),
                 answer_acc=float(out["correct"][ans].mean()), exact_match=exact_match(out["correct"], ev))
    return r


def exact_match(correct: np.ndarray, ev) -> float:
    """Share of the problems whose document ends inside the window with every answer token correct."""
    key = problem_keys(ev)
    mask = ev.answer & ev.complete()
    n = len(np.unique(key[mask]))
    return float("nan") if n == 0 else 1.0 - len(np.unique(key[mask & ~correct])) / n


def problem_keys(ev) -> np.ndarray:
    """(W, T) int: one id per (window, problem) pair, so a problem cut by two windows counts as two."""
    return np.arange(len(ev.y))[:, None] * 100000 + ev.problem_ids()
