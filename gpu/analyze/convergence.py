"""`convergence`: does the loop settle to a fixed point (contract) or wander?

Measures the per-step relative change of the state ||s_k - s_(k-1)|| / ||s_(k-1)||, at a forced depth L (default
3K, beyond training) over all tokens and under the trained halting over the tokens still running; the spectral norms
of the core weights; and per loop group the local Lipschitz constant of the loop map Phi(s) = s + gamma * r(s) at
the state after K steps with its fixed-point residual (reference.contraction, float64 numpy). Verdict: contractive
when the Lipschitz constant is < 1 (Banach: iterating converges); flagged non-contractive when it is >= 1 and the
mean change does not shrink from step K to step L.
"""
from __future__ import annotations

import sys

import numpy as np

from ..diagnostics import running_mean_per_step, running_tokens_per_step
from ..probe import collect, params_for, with_loops
from ..stats import markdown_table
from .load import setup
from .output import header, out_name, write_outputs
from .plotting import pyplot


def loop_map_groups(p64: dict, toks: np.ndarray, cfg, lipschitz_iters: int) -> list[dict]:
    """Per loop group: local Lipschitz constant at the state after K steps (power iteration), mean fixed-point
    residual and the size of the step scale gamma."""
    from reference import contraction
    groups = []
    for g in range(cfg.n_groups):
        lip = contraction.lipschitz(p64, toks, cfg, group=g, iters=lipschitz_iters)
        res = contraction.fixed_point_residual(p64, toks, cfg, group=g)
        gamma = np.abs(p64[f"loop.{g}.step_scale"])
        groups.append(dict(group=g, lipschitz=float(lip), fixed_point_residual=float(res.mean()),
                           step_scale_mean_abs=float(gamma.mean()), step_scale_max_abs=float(gamma.max())))
    return groups


def verdict(lip_max: float, rate: float) -> tuple[bool, str, str]:
    """(non_contractive, short label, sentence) from the largest Lipschitz constant and the tail rate of the mean
    change past K."""
    certified = lip_max < 1
    non_contractive = not certified and not (rate < 1)
    short = "contractive" if certified else "NON-CONTRACTIVE" if non_contractive else "not certified contractive"
    text = ("contractive: Lipschitz < 1, the loop map is a local contraction" if certified else
            f"NON-CONTRACTIVE: Lipschitz {lip_max:.3f} >= 1 and the mean change does not shrink past K "
            f"(rate {rate:.3f} per step)" if non_contractive else
            f"not a certified contraction (Lipschitz {lip_max:.3f} >= 1), but the mean change shrinks past K "
            f"(geometric rate {rate:.3f} per step)")
    return non_contractive, short, text


def convergence(run_dir, windows: int = 64, loops: int | None = None, split: str = "val", data: str | None = None,
                lipschitz_windows: int = 2, lipschitz_iters: int = 50, batch_size: int = 32,
                progress: bool = True) -> dict:
    """Deltas at forced depth L and under the trained halting, spectral norms, Lipschitz constants and the verdict
    (module docstring); the Lipschitz estimate uses the first lipschitz_windows windows. Writes
    convergence.{csv,md,png} and convergence_{groups,spectral,summary}.csv; warns on stderr when non-contractive."""
    from reference import contraction
    run, ev = setup(run_dir, data, split, windows)
    cfg, K = run.cfg, run.cfg.max_loops
    L = loops or 3 * K
    forced = collect(run.params, with_loops(cfg, L), ev.x, None, batch_size, keep=("deltas",), progress=progress,
                     desc=f"forced {L} loops")
    adaptive = collect(run.params, cfg, ev.x, None, batch_size, keep=("deltas",), progress=progress,
                       desc="trained halting")
    run_mean = running_mean_per_step(adaptive["deltas"], adaptive["n_steps"], K)
    cnt = running_tokens_per_step(adaptive["n_steps"], K)
    flat = forced["deltas"].reshape(-1, L)  # (W T G, L)
    rows = [dict(step=k + 1, forced_mean=float(flat[:, k].mean()), forced_median=float(np.median(flat[:, k])),
                 forced_p10=float(np.percentile(flat[:, k], 10)), forced_p90=float(np.percentile(flat[:, k], 90)),
                 trained_running_mean=float(run_mean[k]) if k < K else float("nan"),
                 trained_running_tokens=int(cnt[k]) if k < K else 0) for k in range(L)]
    p64 = params_for({k: v.astype(np.float64) for k, v in run.params.items()}, cfg)
    spec = [dict(weight=n, spectral_norm=s) for n, s in contraction.spectral_norms(p64, cfg).items()]
    toks = ev.x[:lipschitz_windows]
    groups = loop_map_groups(p64, toks, cfg, lipschitz_iters)
    mean_k, mean_l = flat[:, K - 1].mean(), flat[:, L - 1].mean()
    rate = float((mean_l / mean_k) ** (1 / (L - K))) if L > K and mean_k > 0 else float("nan")
    lip_max = max(g["lipschitz"] for g in groups)
    non_contractive, short, text = verdict(lip_max, rate)
    summary = dict(K=K, forced_loops=L, mean_delta_at_K=float(mean_k), mean_delta_at_L=float(mean_l),
                   tail_rate=rate, lipschitz_max=float(lip_max), non_contractive=bool(non_contractive), verdict=text)
    md = header("Convergence of the loop", run, ev, split)
    md += f"**Verdict: {text}.**\n\n"
    md += ("Relative change of the state per step, `||s_k - s_(k-1)|| / ||s_(k-1)||`: forced = every token runs "
           f"{L} steps (fixed halting); trained = the run's own halting, over the tokens still running.\n\n")
    md += markdown_table(rows, digits=4) + "\n## Loop map per group\n\n"
    md += (f"Local Lipschitz constant of the loop map at the state after K = {K} steps, over "
           f"{toks.shape[0]} windows ({lipschitz_iters} power iterations), and fixed-point residual.\n\n")
    md += markdown_table(groups, digits=4) + "\n## Spectral norms of the core weights\n\n"
    md += markdown_table(spec, digits=3)
    fig = _figure(rows, run_mean, spec, K, L, f"{short}: Lipschitz {lip_max:.2f}, tail rate {rate:.3f}/step")
    tables = {"": rows, "groups": groups, "spectral": spec, "summary": [summary]}
    paths = write_outputs(run_dir, out_name("convergence", data, split), tables, md, fig)
    if non_contractive:
        print(f"WARNING: {text}", file=sys.stderr)
    return dict(rows=rows, groups=groups, spectral=spec, summary=summary, md=md, paths=paths)


def _figure(rows, run_mean, spec, K, L, title):
    """Left: the delta curves (forced mean with its 10-90% band, trained halting); right: the largest spectral norms."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    steps = np.arange(1, L + 1)
    a1.plot(steps, [r["forced_mean"] for r in rows], "o-", label="forced depth, mean")
    a1.fill_between(steps, [r["forced_p10"] for r in rows], [r["forced_p90"] for r in rows], alpha=0.2,
                    label="forced, 10-90%")
    a1.plot(steps[:K], run_mean, "s--", label="trained halting, running tokens")
    a1.axvline(K, color="gray", ls=":", label=f"training max K={K}")
    a1.set_yscale("log")
    a1.set_xlabel("loop step k")
    a1.set_ylabel("relative change of the state")
    a1.set_title(title, fontsize=9)
    a1.legend(fontsize=7)
    top = sorted(spec, key=lambda s: -s["spectral_norm"])[:15]
    a2.barh(range(len(top)), [s["spectral_norm"] for s in top], color="#4c72b0")
    a2.set_yticks(range(len(top)), [s["weight"] for s in top], fontsize=6)
    a2.set_xlabel("spectral norm")
    a2.set_title("spectral norms of the core weights", fontsize=9)
    fig.tight_layout()
    return fig
