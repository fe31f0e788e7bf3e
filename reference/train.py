"""A tiny model trained by the numpy reference alone: `python -m reference.train`.

Byte-level language modelling on text every Python install carries (the standard library's docstrings),
with AdamW, warmup + cosine, gradient clipping; prints loss and mean loop depth as it goes.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

import numpy as np

from .config import get_preset, PRESETS
from .model import forward, forward_backward, init_params, loss
from .optim import AdamW, clip_grad_norm, lr_at

DOC_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "argparse", "textwrap", "string",
               "random", "statistics", "fractions", "decimal", "heapq", "bisect", "shutil", "os")


def stdlib_docs_text() -> str:
    """The docstrings of some standard-library modules and their public members: plain technical English."""
    parts = []
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                doc = inspect.getdoc(getattr(mod, attr, None))
                if doc and doc not in parts:
                    parts.append(doc)
    return "\n\n".join(parts)


def byte_splits(text: str, val_fraction: float = 0.1):
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    n_val = int(len(data) * val_fraction)
    return data[:-n_val], data[-n_val:]


def get_batch(data, batch_size, seq_len, rng):
    """Random windows: tokens (B, T) and next-token targets (B, T)."""
    start = rng.integers(0, len(data) - seq_len - 1, batch_size)
    x = np.stack([data[i:i + seq_len] for i in start])
    y = np.stack([data[i + 1:i + seq_len + 1] for i in start])
    return x, y


def unigram_loss(train, val, vocab_size) -> float:
    """Cross-entropy (nats/token) of the add-one smoothed training token frequencies on the validation tokens:
    the loss of a model that ignores context, the baseline a language model must beat."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val].mean())


def train(cfg, steps=300, batch_size=16, seq_len=None, lr=3e-3, seed=0, eval_every=50, text=None,
          progress=True, dtype="float32"):
    """Train with the reference; returns a dict of the loss history and final metrics."""
    from tqdm import tqdm
    seq_len = seq_len or cfg.block_size
    train_data, val_data = byte_splits(text if text is not None else stdlib_docs_text())
    rng = np.random.default_rng(seed)
    params = init_params(cfg, seed, dtype)
    opt = AdamW(params, lr=lr, weight_decay=0.1)
    history = []
    bar = tqdm(range(steps), disable=not progress, desc="reference train", unit="step")
    t0 = time.time()
    for step in bar:
        x, y = get_batch(train_data, batch_size, seq_len, rng)
        total, grads, _, aux = forward_backward(params, x, y, cfg)
        clip_grad_norm(grads, 1.0)
        opt.step(grads, lr=lr_at(step, lr, warmup=max(1, steps // 20), total=steps))
        depth = float(aux["n_steps"].mean())
        history.append(dict(step=step, loss=float(total), mean_depth=depth))
        bar.set_postfix(loss=f"{float(total):.3f}", depth=f"{depth:.2f}",
                        tok_s=f"{(step + 1) * batch_size * seq_len / (time.time() - t0):.0f}")
    vrng = np.random.default_rng(seed + 1)
    vx, vy = get_batch(val_data, 4 * batch_size, seq_len, vrng)
    val_loss, parts = loss(params, vx, vy, cfg)
    n_steps = parts["aux"]["n_steps"]
    return dict(params=params, history=history, val_ce=float(parts["ce"]), val_loss=float(val_loss),
                unigram=unigram_loss(train_data, val_data, cfg.vocab_size),
                mean_depth=float(n_steps.mean()),
                depth_hist=np.bincount(n_steps.ravel(), minlength=cfg.max_loops + 1)[1:].tolist())


def main(argv=None) -> int:
    """`python -m reference.train`: bad options and values are reported by the parser (one line, exit status 2)."""
    ap = argparse.ArgumentParser(prog="python -m reference.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--halt", default=None, help="override the halting mode (fixed | act | pondernet | converge)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            ap.error(f"{flag}={value}: expected an int >= 1")
    if not args.lr > 0:
        ap.error(f"--lr={args.lr}: expected a number > 0")
    try:
        cfg = get_preset(args.preset, **({"halt": args.halt} if args.halt else {}))
    except ValueError as err:  # e.g. --halt=sometimes: one line, exit status 2, like the parser's own errors
        ap.error(str(err))
    print(f"reference training: preset={args.preset} halt={cfg.halt} max_loops={cfg.max_loops} "
          f"d_model={cfg.d_model} steps={args.steps}")
    out = train(cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    first, last = out["history"][0]["loss"], out["history"][-1]["loss"]
    print(f"train loss {first:.3f} -> {last:.3f}")
    print(f"val cross-entropy {out['val_ce']:.3f} nats/byte (unigram baseline {out['unigram']:.3f})")
    print(f"mean depth {out['mean_depth']:.2f} of max {cfg.max_loops}; tokens halting at 1..K: {out['depth_hist']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
