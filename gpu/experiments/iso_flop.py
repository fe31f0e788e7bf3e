"""`python -m gpu.experiments iso-flop`: a looped model against dense models at equal training FLOPs.

Three models of the same width train on the same data (the bundled corpus by default) with the same batch,
learning rate schedule and evaluation windows, each for as many steps as the FLOP budget buys:

    looped     n_prelude + n_layer (looped K times) + n_coda blocks                     (the model under test)
    dense-1x   the same unique blocks, each run once (same parameters, fewer FLOPs per token: more steps)
    dense-Kx   reference.accounting.iso_flop_dense(looped): the dense depth with the looped model's FLOPs per token

budget = flops_per_token(looped, full depth K) * tokens per step * --looped-steps; a model with F FLOPs per token
gets round(budget / (F * tokens per step)) steps (FLOPs as reference.accounting counts them: 3x forward).
Reported: final validation cross-entropy of each, and the share of the dense-1x -> dense-Kx gap the looped model
closes, (CE_1x - CE_looped) / (CE_1x - CE_Kx): 0 = no better than its own unique layers, 1 = as good as the
deep dense model (undefined when dense-Kx is not better than dense-1x at this budget).
Writes OUT/{looped,dense-1x,dense-Kx}[-seedS]/ (run folders) and OUT/analysis/iso_flop.{csv,md,png}.
"""
from __future__ import annotations

import json
import os

import numpy as np

from reference.accounting import flops_per_token, iso_flop_dense, param_counts
from reference.config import LoopConfig, dense_variant

from ..stats import markdown_table


def models(d_model=64, n_head=4, block_size=64, n_prelude=1, n_layer=1, n_coda=1, loops=4, halt="fixed",
           **model_kw) -> dict[str, LoopConfig]:
    """The three configs: looped, dense with the same unique blocks, dense with the looped FLOPs per token."""
    looped = LoopConfig(d_model=d_model, n_head=n_head, block_size=block_size, n_prelude=n_prelude, n_layer=n_layer,
                        n_coda=n_coda, max_loops=loops, halt=halt, **model_kw)
    return {"looped": looped,
            "dense-1x": dense_variant(looped, n_prelude + n_layer + n_coda),
            "dense-Kx": iso_flop_dense(looped)}


def _finished(run_dir, tc_dict, mc_dict) -> dict | None:
    """The last eval record of a finished run with exactly these configs, else None."""
    from ..cli import read_json
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    saved = read_json(path, "choose another --out")
    evals = eval_curve(run_dir) if os.path.isfile(os.path.join(run_dir, "metrics.jsonl")) else []
    watch = {"progress", "resume", "resume_from", "overwrite"}  # how it was run, not what it computes
    same = saved.get("model") == mc_dict and {k: v for k, v in saved.get("train", {}).items() if k not in watch} == \
        {k: v for k, v in tc_dict.items() if k not in watch}
    if not same:
        raise ValueError(f"{run_dir!r} holds a run with other settings: choose another --out")
    return evals[-1] if evals and evals[-1]["step"] == tc_dict["max_steps"] else None


def eval_curve(run_dir) -> list[dict]:
    """The eval records of a run's metrics.jsonl (a torn last line, from a killed run, is skipped)."""
    from ..train.metrics import split_records
    lines, _ = split_records(os.path.join(run_dir, "metrics.jsonl"), 2 ** 62)
    return [r for r in map(json.loads, lines) if r.get("type") == "eval"]


def iso_flop(out: str, looped_steps: int = 1500, batch_size: int = 16, lr: float = 3e-3, data: str = "bundled",
             seeds=(0,), eval_points: int = 5, progress: bool = True, **model_kw) -> dict:
    """Train the three models at equal training FLOPs (see the module docstring) and write the comparison."""
    from ..config import TrainConfig
    from ..data import load_manifest
    from ..probe import resolve_data
    from ..train import run
    cfgs = models(**model_kw)
    vocab = int(load_manifest(resolve_data(data))["vocab_size"])
    cfgs = {k: c.replace(vocab_size=vocab) for k, c in cfgs.items()}
    seq = cfgs["looped"].block_size
    tokens_per_step = batch_size * seq
    budget = flops_per_token(cfgs["looped"], seq_len=seq) * tokens_per_step * looped_steps
    rows, curves = [], {}
    for seed in seeds:
        for name, mc in cfgs.items():
            f = flops_per_token(mc, seq_len=seq)
            steps = max(1, round(budget / (f * tokens_per_step)))
            tc = TrainConfig(out=os.path.join(out, name + (f"-seed{seed}" if len(seeds) > 1 else "")), data=data,
                             max_steps=steps, batch_size=batch_size, lr=lr, warmup=min(40, steps // 10),
                             eval_every=max(1, steps // eval_points), ckpt_every=steps, seed=seed, progress=progress)
            ev = _finished(tc.out, tc.to_dict(), mc.to_dict())
            if ev is None:
                print(f"iso-flop: training {name} (seed {seed}): {steps} steps x {tokens_per_step} tokens x "
                      f"{f / 1e6:.2f} MFLOP/token", flush=True)
                started = os.path.isfile(os.path.join(tc.out, "config.json"))  # interrupted earlier: continue it
                ev = run(TrainConfig(**{**tc.to_dict(), "resume": started}), mc)
            pc = param_counts(mc)
            rows.append(dict(model=name, seed=seed, blocks=mc.n_prelude + mc.n_layer + mc.n_coda,
                             effective_depth=mc.n_prelude + mc.n_layer * mc.max_loops + mc.n_coda,
                             params=pc["unique"], non_embedding_params=pc["non_embedding"],
                             train_mflops_per_token=f / 1e6, steps=steps, tokens=steps * tokens_per_step,
                             train_pflops=steps * tokens_per_step * f / 1e15, val_ce=ev["val_ce"],
                             mean_depth=ev["mean_depth"]))
            curves[(name, seed)] = [(r["step"] * tokens_per_step * f, r["val_ce"]) for r in eval_curve(tc.out)]
    mean = {n: float(np.mean([r["val_ce"] for r in rows if r["model"] == n])) for n in cfgs}
    gap = mean["dense-1x"] - mean["dense-Kx"]
    closed = (mean["dense-1x"] - mean["looped"]) / gap if gap > 0 else float("nan")
    summary = dict(seeds=len(seeds), budget_pflops=budget / 1e15, ce_looped=mean["looped"],
                   ce_dense_1x=mean["dense-1x"], ce_dense_Kx=mean["dense-Kx"], gap_1x_minus_Kx=gap, gap_closed=closed)
    lc = cfgs["looped"]
    md = (f"# Iso-FLOP comparison\n\nlooped: d_model {lc.d_model}, {lc.n_prelude} prelude + {lc.n_layer} core x "
          f"{lc.max_loops} loops ({lc.halt} halting) + {lc.n_coda} coda; data `{data}`; batch {batch_size} x {seq} "
          f"tokens; lr {lr}; budget {budget / 1e15:.4f} PFLOP of training per model and seed ({looped_steps} looped "
          f"steps).\n\n" + markdown_table(rows, digits=4) + "\n## Summary (means over seeds)\n\n"
          + markdown_table([summary], digits=4)
          + ("\nShare of the dense-1x -> dense-Kx gap closed by the looped model: "
             + (f"**{closed:.2f}**" if gap > 0 else "undefined: dense-Kx is not better than dense-1x at this budget")
             + ".\n"))
    from ..analyze import _plt, write_outputs
    fig, ax = _plt().subplots(figsize=(6.5, 3.8))
    colours = {"looped": "#c44e52", "dense-1x": "#4c72b0", "dense-Kx": "#55a868"}
    for (name, seed), pts in curves.items():
        ax.plot([p[0] / 1e15 for p in pts], [p[1] for p in pts], "o-", color=colours[name],
                label=name if seed == seeds[0] else None, alpha=0.9)
    ax.set_xlabel("training PFLOPs")
    ax.set_ylabel("validation cross-entropy (nats)")
    ax.set_title(f"iso-FLOP: gap closed = {closed:.2f}" if gap > 0 else "iso-FLOP")
    ax.legend()
    fig.tight_layout()
    paths = write_outputs(out, "iso_flop", {"": rows, "summary": [summary]}, md, fig)
    return dict(rows=rows, summary=summary, md=md, paths=paths)
