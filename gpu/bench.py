"""Benchmarks (commands, not tests): `python -m gpu.bench train --preset looped-100m --device cuda`.

`python -m gpu.bench adaptive` measures whether adaptive depth pays (gpu/bench_adaptive.py: compaction, its overhead,
cached generation, adaptive vs fixed depth in generation) and prints the rows of docs/benchmarks.md.

`train` prints tokens/s, achieved FLOP/s at the realized depth and MFU against a stated peak. On the CPU it also
times the numpy reference's training step on the same config and batch, in the same run, and prints the
ratio (timings on a shared machine are noisy: compare ratios measured side by side, not absolute times).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import reference
from reference.accounting import flops_per_token, param_counts, peak_flops
from reference.config import PRESETS, get_preset
from reference.optim import AdamW

from .cli import check_float, check_int, run_command
from .model import from_reference
from .train.device import resolve_device


def device_peak(device: torch.device) -> tuple[str, float | None]:
    """(device name, its dense bf16 peak FLOP/s from reference.accounting.peak_flops, or None if unknown)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, peak_flops(name)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_torch_steps(model, optimizer, x, y, steps, warmup, device, dtype):
    """Seconds per optimizer step (median of `steps` timed after `warmup`) and the mean realized depth."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast(device.type, enabled=False)
    times, depth = [], 0.0
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        with ctx:
            _, loss, aux = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            depth = float(aux["n_steps"].float().mean())
    return float(np.median(times)), depth


def time_reference_steps(cfg, x, y, steps):
    """Seconds per numpy reference training step (forward, backward, AdamW), median after one warm-up step."""
    params = reference.init_params(cfg, 0, "float32")
    opt = AdamW(params, lr=1e-3)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        _, grads = reference.loss_and_grads(params, x, y, cfg)
        opt.step(grads)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def check_args(args) -> None:
    """ValueError naming the flag for a value the benchmark cannot run with."""
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                               ("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 0),
                               ("--ref-steps", args.ref_steps, 1)):
        check_int(flag, value, least)
    check_int("--max-loops", args.max_loops, 1, optional=True)
    check_float("--peak-flops", args.peak_flops, 0, open_low=True, optional=True)


def bench_train(args):
    """Time training steps of the torch model (and, on the CPU, of the numpy reference) and print the results."""
    check_args(args)
    overrides = {"halt": args.halt} if args.halt else {}
    if args.max_loops:
        overrides["max_loops"] = args.max_loops
    cfg = get_preset(args.preset, **overrides)
    device = resolve_device(args.device)
    seq_len = args.seq_len or cfg.block_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (args.batch_size, seq_len))
    y = rng.integers(0, cfg.vocab_size, (args.batch_size, seq_len))
    model = from_reference(reference.init_params(cfg, 0, "float32"), cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    runner = torch.compile(model) if args.compile else model
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    sec, depth = time_torch_steps(runner, optimizer, xt, yt, args.steps, args.warmup, device, args.dtype)
    tok_s = args.batch_size * seq_len / sec
    fpt = flops_per_token(cfg, max(depth, 1e-9), seq_len)
    name, peak = device_peak(device)
    peak = args.peak_flops or peak
    print(f"device: {name} | torch {torch.__version__} | preset {args.preset} (halt={cfg.halt}, max_loops="
          f"{cfg.max_loops}) | {param_counts(cfg)['unique'] / 1e6:.1f}M params | batch {args.batch_size} x {seq_len} "
          f"| dtype {args.dtype} | compile {args.compile}")
    print(f"torch step: {sec * 1e3:.1f} ms | {tok_s:,.0f} tokens/s | realized mean depth {depth:.2f} | "
          f"{fpt * tok_s / 1e12:.2f} TFLOP/s achieved"
          + (f" | MFU {fpt * tok_s / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else
             " | MFU: no stated peak for this device (pass --peak-flops)"))
    if device.type == "cpu" and not args.skip_reference:
        ref_sec = time_reference_steps(cfg, x, y, args.ref_steps)
        print(f"numpy reference step: {ref_sec * 1e3:.1f} ms | torch is {ref_sec / sec:.2f}x faster "
              f"(same config and batch, measured in this run)")


def bench_adaptive(args):
    """gpu/bench_adaptive.py's measurements, printed as the rows of docs/benchmarks.md, with the command."""
    for flag, value, least in (("--d-model", args.d_model, 1), ("--seq-len", args.seq_len, 1),
                               ("--batch-size", args.batch_size, 1), ("--max-loops", args.max_loops, 2),
                               ("--new-tokens", args.new_tokens, 1), ("--gen-batch", args.gen_batch, 1),
                               ("--repeats", args.repeats, 1), ("--gen-repeats", args.gen_repeats, 1),
                               ("--threads", args.threads, 1)):
        check_int(flag, value, least)
    from .bench_adaptive import markdown, run_all
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    res = run_all(threads=args.threads, d_model=args.d_model, seq_len=args.seq_len, batch=args.batch_size,
                  max_loops=args.max_loops, new_tokens=args.new_tokens, gen_batch=args.gen_batch,
                  repeats=args.repeats, gen_repeats=args.gen_repeats, device=device)
    print(f"device: {device_peak(device)[0]} | torch {torch.__version__} | {args.threads} thread(s) | "
          f"{time.perf_counter() - t0:.0f} s")
    print(markdown(res))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="time training steps")
    t.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    t.add_argument("--halt", default=None, help="override the halting mode, e.g. fixed or act")
    t.add_argument("--max-loops", type=int, default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    t.add_argument("--compile", action="store_true")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seq-len", type=int, default=0, help="0 = block_size")
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--ref-steps", type=int, default=3, help="numpy reference steps timed on CPU")
    t.add_argument("--skip-reference", action="store_true")
    t.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s for the MFU (default: known GPUs)")
    a = sub.add_parser("adaptive", help="does adaptive depth pay? (compaction, overhead, generation)")
    a.add_argument("--d-model", type=int, default=256)
    a.add_argument("--seq-len", type=int, default=256, help="training sequence of the compaction runs")
    a.add_argument("--batch-size", type=int, default=4, help="training batch of the compaction runs")
    a.add_argument("--max-loops", type=int, default=4)
    a.add_argument("--new-tokens", type=int, default=256, help="tokens generated per generation run")
    a.add_argument("--gen-batch", type=int, default=8, help="batch of the adaptive vs fixed generation")
    a.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the training steps")
    a.add_argument("--gen-repeats", type=int, default=3, help="interleaved repeats of the generation runs")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    return run_command(lambda: bench_train(args) if args.what == "train" else bench_adaptive(args))


if __name__ == "__main__":
    sys.exit(main())
