"""`make gpu-check` (python -m gpu.gpu_check): what only a GPU can check, sized for a short lent slot (about 6 minutes
on one H100/H200).

1. the CUDA and CuPy legs of the equivalence suite (`pytest -k equivalence`; bf16 included);
2. bf16 calibration: the largest relative error of bf16 autocast against the float64 reference (loss, logits,
   gradients) over a few drawn models, the numbers docs/equivalence.md's bf16 tolerances should rest on;
3. tokens/s and MFU over `--steps` steps: looped-100m at fixed depth and with ACT, dense-400m (compiled, bf16);
4. the compacting executor against the masked one (gpu/bench_adaptive.py) on the GPU.
Writes everything to OUT/gpu_check.json and prints the rows for docs/benchmarks.md. Without CUDA it says so and
exits 0. The device machine installs nothing: `make gpu-deps` puts the pure-Python dependencies it may lack into
.gpu-deps/ (ignored by git), which the device tool carries and this script appends to sys.path.
`--device cpu --quick` runs every part tiny on the CPU (what the test suite checks).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

DEPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".gpu-deps")


def equivalence_legs(timeout: int) -> dict:
    """Run the equivalence suite in a subprocess (the CUDA / CuPy legs run where the device exists); its summary."""
    code = (f"import sys; sys.path.append({DEPS!r}); import pytest; "
            f"sys.exit(pytest.main(['-q', '-k', 'equivalence', '-p', 'no:cacheprovider', 'tests']))")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return dict(returncode=proc.returncode, summary=lines[-1] if lines else "", seconds=round(time.time() - t0, 1),
                failures=[line for line in lines if line.startswith("FAILED")][:20])


def bf16_calibration(device, draws: int = 8, seed: int = 0) -> dict:
    """max over draws of |bf16 - float64| / max|float64| for loss, logits and every gradient (halting fixed, so a
    rounding flip of N cannot mix into the numbers)."""
    import numpy as np
    import torch

    import reference as R

    from .model import from_reference
    worst = dict(loss=0.0, logits=0.0, grads=0.0)
    rng = np.random.default_rng(seed)
    for i in range(draws):
        cfg = R.LoopConfig(vocab_size=97, block_size=32, d_model=int(rng.choice([32, 64])), n_head=4,
                           max_loops=int(rng.integers(1, 5)), halt="fixed", init_std=0.1)
        params = R.init_params(cfg, seed + i, "float64")
        tokens = rng.integers(0, cfg.vocab_size, (4, 32))
        loss, grads, logits, _ = R.forward_backward(params, tokens, tokens, cfg)
        model = from_reference(params, cfg, device=device, dtype=torch.float32)
        t = torch.from_numpy(tokens).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, l16, _ = model(t, t)
        l16.backward()
        worst["loss"] = max(worst["loss"], abs(float(l16) - loss) / abs(loss))
        worst["logits"] = max(worst["logits"], float(np.abs(out.detach().float().cpu().numpy() - logits).max()
                                                     / np.abs(logits).max()))
        for name, p in model.named_parameters():
            g = grads[name]
            if np.abs(g).max() > 0:
                got = np.zeros_like(g) if p.grad is None else p.grad.float().cpu().numpy()
                worst["grads"] = max(worst["grads"], float(np.abs(got - g).max() / np.abs(g).max()))
    return worst


def throughput(device, steps: int, quick: bool) -> list[dict]:
    """tokens/s and MFU of the real presets (tiny ones with --quick), via gpu.bench's timing."""
    import numpy as np
    import torch

    import reference as R
    from reference.accounting import flops_per_token, mfu

    from .bench import device_peak, time_torch_steps
    from .model import from_reference
    name, peak = device_peak(device)
    rows = []
    runs = [("looped-100m", dict(halt="fixed")), ("looped-100m", dict(halt="act")), ("dense-400m", {})]
    for preset, overrides in runs:
        cfg = R.get_preset("tiny" if quick else preset, **overrides)
        batch, seq = (2, 32) if quick else (8, cfg.block_size)
        model = from_reference(R.init_params(cfg, 0), cfg, device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        compiled = torch.compile(model) if device.type == "cuda" else model
        x = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq))).to(device)
        dtype = "bfloat16" if device.type == "cuda" else "float32"
        sec, depth = time_torch_steps(compiled, opt, x, x, steps, 2 if quick else 10, device, dtype)
        tok_s = batch * seq / sec
        fpt = flops_per_token(cfg, depth, seq)
        rows.append(dict(preset=preset, halt=cfg.halt, batch=batch, seq=seq, step_s=sec, tokens_per_s=tok_s,
                         mean_depth=depth, mfu=None if peak is None else mfu(fpt, tok_s, peak), device=name))
        del model, compiled, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-check"), help="folder for gpu_check.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per throughput run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, no pytest run (the test suite's check)")
    a = ap.parse_args(argv)
    sys.path.append(DEPS)
    import torch
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA device here; nothing to check (run it on a GPU machine)")
        return 0
    from reference.files import atomic_write_json

    from .bench_adaptive import compaction
    device = torch.device(a.device)
    result = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, command="make gpu-check")
    if not a.quick:
        result["equivalence"] = equivalence_legs(timeout=240)
        print("equivalence:", result["equivalence"]["summary"])
    result["bf16"] = bf16_calibration(device, draws=2 if a.quick else 8)
    print("bf16 worst relative errors:", result["bf16"])
    result["throughput"] = throughput(device, 2 if a.quick else a.steps, a.quick)
    for r in result["throughput"]:
        mfu_text = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['preset']} ({r['halt']}) | {r['batch']} x {r['seq']} | {r['tokens_per_s']:,.0f} tok/s | "
              f"depth {r['mean_depth']:.2f} | MFU {mfu_text} |")
    size = dict(d_model=64, seq_len=64, repeats=1) if a.quick else dict(d_model=1024, seq_len=1024, batch=8)
    result["compaction"] = compaction(device=device, **size)
    print("compaction:", {k: round(v, 3) if isinstance(v, float) else v for k, v in result["compaction"].items()})
    os.makedirs(a.out, exist_ok=True)
    atomic_write_json(os.path.join(a.out, "gpu_check.json"), result)
    print("wrote", os.path.join(a.out, "gpu_check.json"))
    return 0 if result.get("equivalence", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
