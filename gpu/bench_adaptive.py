"""Does adaptive depth pay? Ratios measured side by side in one process (`python -m gpu.bench adaptive`).

- compaction: a training step (forward + backward) with the compacting executor against the masked one, on a model
  whose tokens halt at different depths; the realized saving next to the share of loop FLOPs the halted tokens skip
  (the theoretical saving at the realized depth);
- overhead: the compacting executor when no token halts (fixed depth), against the masked one;
- generation: tokens/s with the key/value cache against recomputing the window;
- adaptive generation: cached greedy generation at batch 8, adaptive depth (act) against fixed depth K with the same
  block weights; the realized speed-up next to the theoretical one at the realized mean depth (loop FLOPs at K over
  loop FLOPs at that depth, the issue's definition; and the whole model's FLOPs per token).
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


def _gen_config(d_model, block_size, max_loops, halt="act"):
    """The generation benchmarks' model: one-block loop groups, tokens halting at different depths at random init."""
    return R.LoopConfig(vocab_size=2048, block_size=block_size, d_model=d_model, n_head=max(1, d_model // 64),
                        n_prelude=1, n_layer=1, n_coda=1, max_loops=max_loops, halt=halt, loop_scope="layer",
                        halt_bias_init=0.0, step_scale_init=0.5, init_std=0.05)


def generation(d_model=256, new_tokens=256, prompt=16, batch=1, max_loops=4, repeats=3, seed=0, device="cpu") -> dict:
    """Greedy generation of `new_tokens`, with the key/value cache vs recomputing the window: tokens/s and speed-up."""
    from .generate import generate
    from .model import from_reference
    cfg = _gen_config(d_model, prompt + new_tokens, max_loops)
    model = from_reference(R.init_params(cfg, seed), cfg, device=device)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt))
    t = _median_time({"cached": lambda: generate(model, ids, new_tokens, use_cache=True),
                      "recompute": lambda: generate(model, ids, new_tokens, use_cache=False)}, repeats, device)
    return dict(d_model=d_model, new_tokens=new_tokens, batch=batch, cached_tok_s=batch * new_tokens / t["cached"],
                recompute_tok_s=batch * new_tokens / t["recompute"], speedup=t["recompute"] / t["cached"])


def adaptive_generation(d_model=256, new_tokens=256, prompt=16, batch=8, max_loops=4, repeats=3, seed=0,
                        device="cpu") -> dict:
    """Cached greedy generation of `new_tokens` at batch `batch`: adaptive depth (act) vs fixed depth K, the same
    block weights (the fixed model lacks only the halting unit). Realized speed-up = fixed time / adaptive time;
    theoretical = K / the realized mean depth of the new tokens (loop FLOPs), and the whole model's FLOPs per token
    at K over those at that depth (reference.accounting.flops_per_token). A decoding step reads every weight whatever
    its rows, so the deepest row of each new token bounds the saving: K / the mean of that depth is reported too."""
    from .generate import generate
    from .model import from_reference
    cfg = _gen_config(d_model, prompt + new_tokens, max_loops)
    fixed_cfg = cfg.replace(halt="fixed")
    params = R.init_params(cfg, seed)
    models = {"adaptive": from_reference(params, cfg, device=device),
              "fixed": from_reference({k: v for k, v in params.items() if k in R.param_shapes(fixed_cfg)}, fixed_cfg,
                                      device=device)}
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt))
    depths = generate(models["adaptive"], ids, new_tokens)[1]  # (batch, new_tokens)
    depth, deepest = float(depths.mean()), float(depths.max(dim=0).values.mean())
    t = _median_time({name: (lambda m=m: generate(m, ids, new_tokens)) for name, m in models.items()}, repeats, device)
    realized = t["fixed"] / t["adaptive"]
    loop_theory = max_loops / depth
    seq = prompt + new_tokens // 2  # the mean context of a new token
    model_theory = flops_per_token(cfg, max_loops, seq) / flops_per_token(cfg, depth, seq)
    return dict(d_model=d_model, new_tokens=new_tokens, batch=batch, max_loops=max_loops, mean_depth=depth,
                deepest_row_depth=deepest, deepest_row_bound=max_loops / deepest,
                fixed_s=t["fixed"], adaptive_s=t["adaptive"], realized_speedup=realized,
                loop_theoretical=loop_theory, model_theoretical=model_theory,
                realized_over_loop=realized / loop_theory, realized_over_model=realized / model_theory)


def run_all(threads: int = 1, d_model: int = 256, seq_len: int = 256, batch: int = 4, max_loops: int = 4,
            new_tokens: int = 256, gen_batch: int = 8, repeats: int = 5, gen_repeats: int = 3, device="cpu") -> dict:
    """Every measurement above, in one process, on `threads` CPU threads."""
    torch.set_num_threads(threads)
    size = dict(d_model=d_model, seq_len=seq_len, batch=batch, max_loops=max_loops, repeats=repeats)
    gen = dict(d_model=d_model, new_tokens=new_tokens, max_loops=max_loops, repeats=gen_repeats, device=device)
    out = dict(compaction=compaction(**size, device=device), overhead=overhead(**size))
    with torch.no_grad():
        out["generation"] = generation(**gen)
        out["adaptive_generation"] = adaptive_generation(**gen, batch=gen_batch)
    return out


def markdown(res: dict) -> str:
    c, o, g, a = res["compaction"], res["overhead"], res["generation"], res["adaptive_generation"]
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    faster = "compact" if c["compact_s"] < c["masked_s"] else "masked"
    return "\n".join([
        "| measurement | value | target (issue) |", "|---|---|---|",
        f"| training step, d_model {c['d_model']}, seq {c['seq_len']}, batch {c['batch']}, K {c['max_loops']}: "
        f"realized mean depth | {c['mean_depth']:.2f} of {c['max_loops']} | |",
        f"| training step, masked / compact | {c['masked_s']:.3f} s / {c['compact_s']:.3f} s: **{faster}** is faster "
        f"at this depth | |",
        f"| realized saving / share of the step's FLOPs the halted tokens skip | {c['realized_saving']:.3f} / "
        f"{c['skipped_flop_share']:.3f} = **{c['realized_over_theoretical']:.2f}** | >= 0.8: "
        f"{met(c['realized_over_theoretical'] >= 0.8)} |",
        f"| compacting executor when nothing halts, vs masked | **{100 * o['overhead']:+.1f}%** | <= 3%: "
        f"{met(o['overhead'] <= 0.03)} |",
        f"| generation, d_model {g['d_model']}, {g['new_tokens']} new tokens, batch {g['batch']}: cached / recomputing "
        f"| {g['cached_tok_s']:.1f} / {g['recompute_tok_s']:.1f} tokens/s = **{g['speedup']:.1f}x** | >= 5x: "
        f"{met(g['speedup'] >= 5)} |",
        f"| cached generation, batch {a['batch']}, {a['new_tokens']} new tokens: realized mean depth (adaptive) | "
        f"{a['mean_depth']:.2f} of {a['max_loops']} | |",
        f"| fixed / adaptive depth | {a['fixed_s']:.2f} s / {a['adaptive_s']:.2f} s = "
        f"{a['realized_speedup']:.2f}x realized | |",
        f"| realized / theoretical speed-up (loop FLOPs, K / mean depth = {a['loop_theoretical']:.2f}x) | "
        f"**{a['realized_over_loop']:.2f}** | >= 0.8: {met(a['realized_over_loop'] >= 0.8)} |",
        f"| realized / theoretical speed-up (whole-model FLOPs per token, {a['model_theoretical']:.2f}x) | "
        f"{a['realized_over_model']:.2f} | |",
        f"| mean over new tokens of the deepest row's depth (K / it: the bound when a step runs for any row) | "
        f"{a['deepest_row_depth']:.2f} ({a['deepest_row_bound']:.2f}x) | |",
    ])
