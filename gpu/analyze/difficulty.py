"""`difficulty`: does depth track ground-truth difficulty? (runs trained on gpu.tasks synthetic data)

Measures Spearman's rho between depth and each difficulty measure the task folder records per answer token (e.g.
carry_chain for addition), at two levels: over answer tokens, and over problems (mean depth over a problem's answer
tokens against the largest value of the measure in it), each with a cluster-bootstrap CI over windows. Depth is
taken two ways: N, the realized loop steps, and the ponder cost (ACT: N + R, which breaks ties between tokens of
equal N; PonderNet: E[n]; otherwise N). Also mean depth, ponder cost, accuracy and loss per value of each measure.
"""
from __future__ import annotations

import numpy as np

from ..probe import collect
from ..stats import bootstrap_spearman, markdown_table, spearman
from .load import problem_keys, setup
from .output import header, out_name, write_outputs
from .plotting import pyplot


def parse_where(where: str | None, measures: dict) -> tuple[str, int] | None:
    """'MEASURE=VALUE' -> (measure, value); ValueError naming the measures of the folder."""
    if not where:
        return None
    name, _, value = where.partition("=")
    if name not in measures or not value.strip().isdigit():
        raise ValueError(f"--where={where!r}: expected MEASURE=VALUE with MEASURE one of {sorted(measures)} "
                         f"and VALUE an integer")
    return name, int(value)


def correlate(name, m, sel, out, win, key, is_label_measure, n_boot, seed) -> tuple[list[dict], list[dict]]:
    """For one measure m (W, T) over the selected answer tokens sel: the rho rows (depth N and ponder cost, token and
    problem level) and the per-value rows."""
    depth = out["depth"]
    v, w = m[sel], win[sel]
    keys, inv = np.unique(key[sel], return_inverse=True)  # problems
    pv = np.zeros(len(keys))
    np.maximum.at(pv, inv, v)
    pw = np.zeros(len(keys), np.int64)
    pw[inv] = w
    rhos, per_value = [], []
    for kind, dd in (("N", depth), ("ponder", out["ponder"])):
        d = dd[sel]
        rho, p = spearman(d, v)
        lo, hi = bootstrap_spearman(d, v, w, n_boot, seed)
        pd = np.bincount(inv, weights=d) / np.bincount(inv)
        prho, pp = spearman(pd, pv)
        plo, phi = bootstrap_spearman(pd, pv, pw, n_boot, seed)
        rhos.append(dict(measure=name, depth=kind, label_measure=is_label_measure,
                         tokens=int(sel.sum()), rho_token=rho, ci_low=lo, ci_high=hi, p_token=p,
                         problems=len(keys), rho_problem=prho, ci_low_problem=plo, ci_high_problem=phi,
                         p_problem=pp))
    d, pond = depth[sel], out["ponder"][sel]
    for val in np.unique(v):
        s = v == val
        per_value.append(dict(measure=name, value=int(val), tokens=int(s.sum()), mean_depth=float(d[s].mean()),
                              std_depth=float(d[s].std()), mean_ponder=float(pond[s].mean()),
                              acc=float(out["correct"][sel][s].mean()), loss=float(out["loss"][sel][s].mean())))
    return rhos, per_value


def difficulty(run_dir, windows: int = 512, split: str = "val", data: str | None = None, n_boot: int = 300,
               batch_size: int = 32, seed: int = 0, progress: bool = True, where: str | None = None) -> dict:
    """Spearman rho between realized depth and each ground-truth difficulty measure of a synthetic task
    (gpu.tasks), over answer tokens (token level) and over problems (mean depth over a problem's answer tokens
    vs the largest value of the measure in it), with cluster-bootstrap CIs; mean depth and accuracy per value.
    where='MEASURE=VALUE' keeps only the answer tokens with that value (e.g. significant=1: no padding zeros)."""
    run, ev = setup(run_dir, data, split, windows)
    if not ev.task:
        raise ValueError(f"{run.data_dir!r} is not a synthetic task folder: `difficulty` needs a run trained on "
                         f"`python -m gpu.tasks make TASK --out DIR` data (or --data DIR of one)")
    cond = parse_where(where, ev.measures)
    out = collect(run.params, run.cfg, ev.x, ev.y, batch_size, keep=(), progress=progress)
    na, depth = ev.task["na"], out["depth"]
    win = np.broadcast_to(np.arange(len(depth))[:, None], depth.shape)
    key = problem_keys(ev)
    keep = np.ones(depth.shape, bool) if cond is None else ev.measures[cond[0]] == cond[1]
    rhos, per_value = [], []
    for name, m in ev.measures.items():
        if cond and name == cond[0]:
            continue  # constant on the kept tokens
        sel = (m != na) & keep
        if not sel.any():
            raise ValueError(f"--where={where!r} keeps no answer token of measure {name!r}")
        r, p = correlate(name, m, sel, out, win, key, name == ev.task["label_measure"], n_boot, seed)
        rhos, per_value = rhos + r, per_value + p
    md = header(f"Depth vs ground-truth difficulty ({ev.task['name']})", run, ev, split)
    if cond:
        md += f"Only the answer tokens with {cond[0]} = {cond[1]}.\n\n"
    md += ("Spearman rho of depth against each difficulty measure: token level over answer tokens, problem "
           "level = mean depth over a problem's answer tokens vs the largest value in it. 95% CIs resample windows. "
           "Depth `N` is the realized number of loop steps; `ponder` is the ponder cost (ACT: N + R, the remainder "
           "breaking ties between tokens of equal N; PonderNet: the expected halting step E[n]; fixed/converge: N). "
           "rho is nan when the depth (or the measure) is constant.\n\n" + markdown_table(rhos, digits=3)
           + "\n## Depth and accuracy per difficulty value\n\n" + markdown_table(per_value, digits=3))
    fig = _figure(rhos, per_value, f"{ev.task['name']}: depth vs difficulty ({run.path})")
    stem = out_name("difficulty", data, split) + (f"-{cond[0]}{cond[1]}" if cond else "")
    paths = write_outputs(run_dir, stem, {"": rhos, "by_value": per_value}, md, fig)
    return dict(rhos=rhos, per_value=per_value, md=md, paths=paths)


def _figure(rhos, per_value, title):
    """One panel per measure: mean depth N (+- std) and mean ponder cost against the measure's value."""
    plt = pyplot()
    rhos_n = [r for r in rhos if r["depth"] == "N"]
    fig, axes = plt.subplots(1, len(rhos_n), figsize=(3.6 * len(rhos_n), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rhos_n):
        pv = [x for x in per_value if x["measure"] == r["measure"]]
        ax.errorbar([x["value"] for x in pv], [x["mean_depth"] for x in pv], yerr=[x["std_depth"] for x in pv],
                    fmt="o-", capsize=3, label="N (mean +- std)")
        ax.plot([x["value"] for x in pv], [x["mean_ponder"] for x in pv], "s--", label="ponder cost")
        ax.set_xlabel(r["measure"])
        ax.set_ylabel("depth (loop steps)")
        ax.legend(fontsize=7)
        ax.set_title(f"rho = {r['rho_token']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
