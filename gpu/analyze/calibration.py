"""`calibration`: does the halting spend loops where they pay?

For every token (answer tokens only on synthetic tasks): its realized depth N (rounded mean over groups), its loss
under the trained halting, and its loss L_k at every forced depth k = 1..K. The best depth k* is the smallest k with
L_k <= min_j L_j + tol (tol in nats):
  under-thinking: N < k*  (stopping at N costs more than tol nats against a depth the model could reach)
  over-thinking:  N > k*  (k* < N steps would have been within tol of the best: the extra loops bought < tol)
  calibrated:     N == k*
Also Spearman rho of depth against the trained loss and against the gain L_1 - L_N, and the mean loss per
realized depth.
"""
from __future__ import annotations

import numpy as np

from ..probe import collect, with_loops
from ..stats import markdown_table, spearman
from .load import setup
from .output import header, out_name, write_outputs
from .plotting import pyplot


def thinking_rates(depth, Lk, Lt, K: int, tol: float) -> tuple[dict, list[dict]]:
    """depth (n,) realized depth, Lk (n, K) loss at each forced depth, Lt (n,) loss under the trained halting ->
    (rates: shares of under-/over-thinking and their sizes, by_depth: per realized depth the mean losses)."""
    N = np.clip(np.rint(depth).astype(int), 1, K)
    best = Lk.min(axis=1)
    kstar = np.argmax(Lk <= best[:, None] + tol, axis=1) + 1       # first k within tol of the best
    under, over = N < kstar, N > kstar
    at_n = Lk[np.arange(len(N)), N - 1]
    rho_loss = spearman(depth, Lt)
    rho_gain = spearman(depth, Lk[:, 0] - at_n)
    excess = at_n - Lk[np.arange(len(N)), kstar - 1]  # loss at N minus loss at k*
    rates = dict(tokens=int(len(N)), tol_nats=tol, under_thinking=float(under.mean()),
                 calibrated=float((N == kstar).mean()), over_thinking=float(over.mean()),
                 under_excess_loss=float(excess[under].mean()) if under.any() else float("nan"),
                 over_extra_steps=float((N - kstar)[over].mean()) if over.any() else float("nan"),
                 mean_best_depth=float(kstar.mean()), mean_depth=float(N.mean()),
                 rho_depth_loss=rho_loss[0], rho_depth_gain=rho_gain[0])
    by_depth = []
    for n in range(1, K + 1):
        m = N == n
        if m.any():
            by_depth.append(dict(depth=n, tokens=int(m.sum()), share=float(m.mean()), trained_loss=float(Lt[m].mean()),
                                 mean_best_depth=float(kstar[m].mean()),
                                 **{f"loss_at_{k}": float(Lk[m, k - 1].mean()) for k in range(1, K + 1)}))
    return rates, by_depth


def calibration(run_dir, windows: int = 128, tol: float = 0.05, split: str = "val", data: str | None = None,
                batch_size: int = 32, progress: bool = True) -> dict:
    """Under-/over-thinking rates and loss by realized depth (module docstring) over `windows` held-out windows.
    Writes calibration.{csv,md,png} and calibration_by_depth.csv; returns dict(rates, by_depth, md, paths)."""
    from tqdm import tqdm
    run, ev = setup(run_dir, data, split, windows)
    cfg, K = run.cfg, run.cfg.max_loops
    trained = collect(run.params, cfg, ev.x, ev.y, batch_size, keep=(), progress=progress, desc="trained halting")
    forced = np.stack([collect(run.params, with_loops(cfg, k), ev.x, ev.y, batch_size, keep=())["loss"]
                       for k in tqdm(range(1, K + 1), desc="forced depths", disable=not progress, leave=False)], -1)
    sel = ev.answer
    rates, by_depth = thinking_rates(trained["depth"][sel], forced[sel], trained["loss"][sel], K, tol)
    md = header("Halting calibration", run, ev, split)
    md += (f"Tokens: {'answer tokens' if ev.task else 'all targets'}. Best depth k* = smallest forced depth whose loss "
           f"is within tol = {tol} nats of the token's best forced loss. Under-thinking: N < k*; over-thinking: N > k*."
           "\n\n" + markdown_table([rates], digits=3)
           + "\n## Loss by realized depth (trained halting and forced depths)\n\n"
           + markdown_table(by_depth, digits=3))
    fig = _figure(rates, by_depth, K, tol)
    paths = write_outputs(run_dir, out_name("calibration", data, split), {"": [rates], "by_depth": by_depth}, md, fig)
    return dict(rates=rates, by_depth=by_depth, md=md, paths=paths)


def _figure(rates, by_depth, K, tol):
    """Left: loss at every forced depth per realized-depth group (star: the trained halting); right: the rates."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw=dict(width_ratios=[2, 1]))
    for r in by_depth:
        line, = a1.plot(range(1, K + 1), [r[f"loss_at_{k}"] for k in range(1, K + 1)], "o-",
                        label=f"tokens that took N={r['depth']} ({r['share']:.0%})")
        a1.plot([r["depth"]], [r["trained_loss"]], "*", ms=12, color=line.get_color())
    a1.set_xlabel("forced depth k")
    a1.set_ylabel("mean loss (nats)")
    a1.set_title("loss at every forced depth, grouped by realized depth (* = trained halting)")
    a1.legend(fontsize=7)
    a2.bar(["under", "calibrated", "over"], [rates["under_thinking"], rates["calibrated"], rates["over_thinking"]],
           color=["#c44e52", "#55a868", "#dd8452"])
    a2.set_ylabel("share of tokens")
    a2.set_title(f"tol = {tol} nats")
    fig.tight_layout()
    return fig
