"""Does adaptive depth pay? Ratios measured side by side in one process (`python -m gpu.bench adaptive`).

- compaction: a training step (forward + backward) with the compacting executor against the masked one, on a model
  whose tokens halt at different depths; the realized saving next to the share of loop FLOPs the halted tokens skip
  (the theoretical saving at the realized depth);
- overhead: the compacting executor when no token halts (fixed depth), against the masked one;
- generation: tokens/s with the key/value cache against recomputing the window.
Times are medians over repeats with the two variants interleaved, so a busy machine slows both alike; only the
ratios are meant to be read off a CPU (absolute times count only from a GPU).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import reference as R
from reference.accounting import block_flops, flops_per_token


def _median_time(fns: dict, repeats: int, device=None) -> dict:
    """name -> median seconds of fn(), the functions called in turn (interleaved) `repeats` times after a warm-up."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _train_step(model, tokens):
    def step():
        model.zero_grad(set_to_none=True)
        _, loss, aux = model(tokens, tokens)
        loss.backward()
        return aux
    return step


def compaction(d_model=256, seq_len=256, batch=4, max_loops=4, halt_bias_init=0.0, repeats=5, seed=0,
               device="cpu") -> dict:
    """Training step, compact vs masked executor, one-block loop groups (layer scope). Returns the times, the
    realized mean depth, the share of the whole step's FLOPs that halted tokens skip, and realized / skipped."""
    from .model import from_reference
    cfg = R.LoopConfig(vocab_size=2048, block_size=seq_len, d_model=d_model, n_head=max(1, d_model // 64),
                       n_prelude=1, n_layer=1, n_coda=1, max_loops=max_loops, halt="act", loop_scope="layer",
                       halt_bias_init=halt_bias_init, step_scale_init=0.5, init_std=0.05)
    params = R.init_params(cfg, seed)
    tokens = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq_len))).to(device)
    models = {ex: from_reference(params, cfg, device=device, executor=ex) for ex in ("masked", "compact")}
    depth = float(_train_step(models["masked"], tokens)()["n_steps"].float().mean())
    t = _median_time({ex: _train_step(m, tokens) for ex, m in models.items()}, repeats, device)
    full = flops_per_token(cfg, seq_len=seq_len)
    skipped = (cfg.max_loops - depth) * cfg.n_layer * 3 * block_flops(cfg, seq_len) / full  # share of the step
    saving = 1 - t["compact"] / t["masked"]
    return dict(d_model=d_model, seq_len=seq_len, batch=batch, max_loops=max_loops, mean_depth=depth,
                masked_s=t["masked"], compact_s=t["compact"], realized_saving=saving, skipped_flop_share=skipped,
                realized_over_theoretical=saving / skipped if skipped > 0 else float("nan"))


def overhead(d_model=256, seq_len=256, batch=4, max_loops=4, repeats=5, seed=0) -> dict:
    """Training step at fixed depth (nothing halts): compact / masked time."""
    from .model import from_reference
    cfg = R.LoopConfig(vocab_size=2048, block_size=seq_len, d_model=d_model, n_head=max(1, d_model // 64),
                       n_layer=1, max_loops=max_loops, halt="fixed", loop_scope="layer")
    params = R.init_params(cfg, seed)
    tokens = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq_len)))
    t = _median_time({ex: _train_step(from_reference(params, cfg, executor=ex), tokens)
                      for ex in ("masked", "compact")}, repeats)
    return dict(masked_s=t["masked"], compact_s=t["compact"], overhead=t["compact"] / t["masked"] - 1)


def generation(d_model=128, new_tokens=256, prompt=16, batch=1, max_loops=4, repeats=3, seed=0) -> dict:
    """Greedy generation of `new_tokens`, with the key/value cache vs recomputing the window: tokens/s and speed-up."""
    from .generate import generate
    from .model import from_reference
    cfg = R.LoopConfig(vocab_size=2048, block_size=prompt + new_tokens, d_model=d_model, n_head=max(1, d_model // 64),
                       max_loops=max_loops, halt="act")
    model = from_reference(R.init_params(cfg, seed), cfg)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt))
    t = _median_time({"cached": lambda: generate(model, ids, new_tokens, use_cache=True),
                      "recompute": lambda: generate(model, ids, new_tokens, use_cache=False)}, repeats)
    return dict(new_tokens=new_tokens, batch=batch, cached_tok_s=batch * new_tokens / t["cached"],
                recompute_tok_s=batch * new_tokens / t["recompute"], speedup=t["recompute"] / t["cached"])


def run_all(threads: int = 1, quick: bool = False) -> dict:
    torch.set_num_threads(threads)
    size = dict(d_model=64, seq_len=64, repeats=2) if quick else {}
    gen = dict(d_model=32, new_tokens=16, repeats=1) if quick else {}
    with torch.no_grad():
        g = generation(**gen)
    return dict(compaction=compaction(**size), overhead=overhead(**size), generation=g)


def markdown(res: dict) -> str:
    c, o, g = res["compaction"], res["overhead"], res["generation"]
    return "\n".join([
        "| measurement | value |", "|---|---|",
        f"| training step, d_model {c['d_model']}, seq {c['seq_len']}, batch {c['batch']}, K {c['max_loops']}: "
        f"realized mean depth | {c['mean_depth']:.2f} |",
        f"| masked / compact step (s) | {c['masked_s']:.3f} / {c['compact_s']:.3f} |",
        f"| realized saving / skipped FLOP share | {c['realized_saving']:.3f} / {c['skipped_flop_share']:.3f} "
        f"= {c['realized_over_theoretical']:.2f} |",
        f"| compact overhead when nothing halts | {100 * o['overhead']:+.1f}% |",
        f"| generation, {g['new_tokens']} new tokens: cached / recompute tokens/s | {g['cached_tok_s']:.1f} / "
        f"{g['recompute_tok_s']:.1f} = {g['speedup']:.1f}x |",
    ])
