"""The summary of a sweep: one row per cell (setting x seed), measured on its run folder, and per setting the mean
and standard deviation over its seeds.

Per cell, on `windows` evenly spaced validation windows of its data (gpu.probe, as gpu.analyze measures):
    val_ce          the run's last evaluation (metrics.jsonl; nats per scored target)
    answer_acc, exact_match   synthetic tasks only: answer tokens argmax-right, whole answers right (gpu.analyze)
    mean_depth      realized loop steps per token (averaged over loop groups); depth_g<i>: group i's (layer scope)
    depth_entropy   entropy in bits of the distribution of N over tokens (and loop groups): 0 = one depth for all
    modal_depth, modal_share  the most common N and the share of tokens at it
    rho_N, rho_ponder (+ _low, _high)  synthetic tasks only: Spearman rho of depth N / the ponder cost against the
                    difficulty measure (default the task's label measure) over answer tokens, with the 95% cluster-
                    bootstrap CI of gpu.analyze difficulty (whose files land in the cell's RUN/analysis/)
    mflops_per_token  training FLOPs per token at the realized mean depth (reference.accounting.flops_per_token)
    tokens_per_s    training throughput of the run's last train record (since its last (re)start; cells that ran
                    side by side share the machine)
sd is the sample standard deviation over seeds (nan for one seed).
"""
from __future__ import annotations

import json
import os

import numpy as np

from reference.accounting import flops_per_token

from ..stats import fmt, markdown_table

HEADLINE = ("val_ce", "answer_acc", "exact_match", "mean_depth", "depth_entropy", "modal_share", "rho_N",
            "rho_ponder", "mflops_per_token", "tokens_per_s")  # the columns of the per-setting table


def last_record(run_dir, kind: str) -> dict:
    from ..train.metrics import split_records
    lines, _ = split_records(os.path.join(run_dir, "metrics.jsonl"), 2 ** 62)
    records = [r for r in map(json.loads, lines) if r.get("type") == kind]
    return records[-1] if records else {}


def depth_stats(n_steps: np.ndarray, K: int) -> dict:
    """mean depth, entropy (bits) of the distribution of N, modal depth and its share; n_steps (W, T, G)."""
    hist = np.bincount(n_steps.ravel().astype(np.int64), minlength=K + 1)[1:]
    p = hist / max(1, hist.sum())
    nz = p[p > 0]
    out = dict(mean_depth=float(n_steps.mean()), depth_entropy=float(-(nz * np.log2(nz)).sum()) + 0.0,  # not -0
               modal_depth=int(np.argmax(p)) + 1, modal_share=float(p.max()))
    if n_steps.shape[-1] > 1:
        out.update({f"depth_g{g}": float(n_steps[..., g].mean()) for g in range(n_steps.shape[-1])})
    return out


def difficulty_rhos(run_dir, windows: int, where: str | None, measure: str | None, n_boot: int, task: dict) -> dict:
    """rho of depth N and of the ponder cost against `measure` (default the task's label measure), with CIs."""
    from ..analyze import difficulty
    name = measure or task["label_measure"]
    res = difficulty(run_dir, windows=windows, where=where, n_boot=n_boot, progress=False)
    rows = {r["depth"]: r for r in res["rhos"] if r["measure"] == name}
    if not rows:
        raise ValueError(f"--measure={name!r}: not a difficulty measure of this task (after --where); its measures: "
                         f"{sorted({r['measure'] for r in res['rhos']})}")
    out = {}
    for kind in ("N", "ponder"):
        r = rows[kind]
        out.update({f"rho_{kind}": r["rho_token"], f"rho_{kind}_low": r["ci_low"], f"rho_{kind}_high": r["ci_high"]})
    return out


def measure_cell(cell, windows: int = 256, where: str | None = None, measure: str | None = None,
                 n_boot: int = 200) -> tuple[dict, list[dict]]:
    """(the cell's row, its rows by label: mean loss and depth of the targets of each label)."""
    from ..analyze import summarize
    from ..probe import collect, eval_windows, load_run
    run = load_run(cell.out)
    cfg = run.cfg
    ev = eval_windows(run.data_dir, "val", windows, cfg.block_size)
    out = collect(run.params, cfg, ev.x, ev.y, keep=())
    row = dict(setting=cell.setting, seed=cell.seed, steps=run.step, val_ce=last_record(cell.out, "eval")["val_ce"])
    if ev.task:
        s = summarize(out, ev)
        row.update(answer_acc=s["answer_acc"], exact_match=s["exact_match"], answer_depth=s["answer_depth"])
    row.update(depth_stats(out["n_steps"], cfg.max_loops))
    if ev.task:
        row.update(difficulty_rhos(cell.out, windows, where, measure, n_boot, ev.task))
    row.update(mflops_per_token=flops_per_token(cfg, row["mean_depth"], cfg.block_size) / 1e6,
               tokens_per_s=last_record(cell.out, "train").get("tokens_per_s", float("nan")))
    by_label = []
    if ev.label is not None:
        for i, label in enumerate(ev.names):
            sel = ev.label == i
            if sel.any():
                by_label.append(dict(setting=cell.setting, seed=cell.seed, label=label, tokens=int(sel.sum()),
                                     loss=float(out["loss"][sel].mean()), mean_depth=float(out["depth"][sel].mean())))
    return row, by_label


def aggregate(rows: list[dict], keys=("setting",)) -> list[dict]:
    """Per group of rows (same values of `keys`, in order of first appearance): seeds and, for every numeric
    column, its mean and sample sd over the group's rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        agg = dict(zip(keys, key), seeds=len(members))
        for col in members[0]:
            values = [m.get(col) for m in members]
            if col in keys or col == "seed" or not all(isinstance(v, (int, float)) for v in values):
                continue
            arr = np.asarray(values, float)
            agg[f"{col}_mean"] = float(arr.mean())
            agg[f"{col}_sd"] = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
        out.append(agg)
    return out


def mean_sd_table(summary: list[dict], columns, keys=("setting",)) -> str:
    """Markdown: one row per group, each column as `mean +- sd`."""
    cols = [c for c in columns if any(f"{c}_mean" in s for s in summary)]
    rows = [{**{k: s[k] for k in keys}, "seeds": s["seeds"],
             **{c: f"{fmt(s.get(f'{c}_mean', float('nan')), 3)} +- {fmt(s.get(f'{c}_sd', float('nan')), 3)}"
                for c in cols}} for s in summary]
    return markdown_table(rows)


def figure(rows: list[dict], settings: list[str], title: str, by_label: list[dict] | None = None):
    """One panel per headline metric: each seed a dot, the mean a bar, per setting; with `by_label` (the
    aggregated rows by label) two more: each label's mean depth, and its loss minus the first setting's, per
    setting (means over seeds)."""
    from ..analyze import pyplot
    metrics = [m for m in ("val_ce", "answer_acc", "mean_depth", "modal_share", "rho_ponder")
               if any(np.isfinite(r.get(m, np.nan)) for r in rows)]
    labels = list(dict.fromkeys(s["label"] for s in by_label)) if by_label else []
    panels = len(metrics) + (2 if labels else 0)
    plt = pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(2.2 + 0.5 * len(settings) * panels, 3.4), squeeze=False)
    if labels:
        at = {(s["setting"], s["label"]): s for s in by_label}
        first = settings[0]
        for ax, (key, what) in zip(axes[0][len(metrics):], (("mean_depth_mean", "mean depth by label"),
                                                             ("loss_mean", f"loss by label - {first}'s"))):
            for label in labels:
                vals = [at[(s, label)][key] if (s, label) in at else np.nan for s in settings]
                if key == "loss_mean":
                    base = at[(first, label)][key] if (first, label) in at else np.nan
                    vals = [v - base for v in vals]
                ax.plot(range(len(settings)), vals, "o-", ms=3, lw=1, label=label)
            ax.set_xticks(range(len(settings)), settings, rotation=60, ha="right", fontsize=7)
            ax.set_title(what, fontsize=9)
        axes[0][-1].legend(fontsize=6, loc="best")
    for ax, m in zip(axes[0], metrics):
        for i, s in enumerate(settings):
            vals = [r.get(m, np.nan) for r in rows if r["setting"] == s]
            ax.bar(i, np.nanmean(vals) if np.isfinite(vals).any() else 0, color="#c8d6e8", width=0.7)
            ax.plot([i] * len(vals), vals, "o", color="#4c72b0", ms=4)
        ax.set_xticks(range(len(settings)), settings, rotation=60, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarize_cells(cells, out: str, windows: int = 256, where: str | None = None, measure: str | None = None,
                    n_boot: int = 200, columns=None, name: str = "sweep", note: str = "") -> dict:
    """Measure every cell, aggregate over seeds and write OUT/analysis/NAME.{csv,md,png}, NAME_summary.csv and
    NAME_by_label.csv (each atomically); `note` goes under the title. Returns dict(rows, summary, by_label, md,
    paths)."""
    from ..analyze import write_outputs
    rows, by_label = [], []
    for cell in cells:
        row, labels = measure_cell(cell, windows, where, measure, n_boot)
        rows.append(row)
        by_label += labels
    if not rows:
        raise ValueError("no cell finished: nothing to summarize")
    summary = aggregate(rows)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    label_summary = aggregate(by_label, keys=("setting", "label"))
    md = (f"# {name.capitalize()}: {len(settings)} settings x {len(rows) // max(1, len(settings))} seeds\n\n"
          f"`{out}`; each cell measured on {windows} validation windows (gpu/experiments/summary.py says how).\n\n"
          + (note + "\n\n" if note else "")
          + "## Mean +- sd over seeds\n\n" + mean_sd_table(summary, columns or HEADLINE)
          + "\n## Every seed\n\n" + markdown_table(rows, digits=4))
    if label_summary:
        md += "\n## By label (mean over seeds)\n\n" + markdown_table(
            [{k: s[k] for k in ("setting", "label", "seeds", "tokens_mean", "loss_mean", "mean_depth_mean")}
             for s in label_summary], digits=3)
    fig = figure(rows, settings, f"{name}: {out}", label_summary)
    tables = {"": rows, "summary": summary, **({"by_label": label_summary} if label_summary else {})}
    paths = write_outputs(out, name, tables, md, fig)
    return dict(rows=rows, summary=summary, by_label=label_summary, md=md, paths=paths)
