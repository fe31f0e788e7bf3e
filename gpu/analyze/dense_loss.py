"""`dense-loss`: does the looped model think longest where a dense model finds the text hardest?

The per-token difficulty of a natural corpus has no ground truth; the loss of a dense baseline on the same token is
the usual stand-in. Both models read the same held-out windows; Spearman rho between the looped model's realized
depth N (and its ponder cost) at each position and the dense model's cross-entropy on the token predicted there,
with a cluster-bootstrap 95% CI over windows, plus the mean depth per quintile of the dense loss.
"""
from __future__ import annotations

import numpy as np

from ..probe import collect, load_run
from ..stats import bootstrap_spearman, markdown_table, spearman
from .load import setup
from .output import header, out_name, write_outputs
from .plotting import pyplot


def dense_loss(run_dir, dense: str, windows: int = 256, split: str = "val", data: str | None = None,
               n_boot: int = 300, batch_size: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """rho(depth of the run at a position, the dense run's loss on the token predicted there) over every position
    of `windows` held-out windows of the looped run's data (or `data`); `dense` is a run folder of a model that reads
    the same tokenizer and at least the same context (e.g. one trained by `gpu.experiments iso-flop`)."""
    run, ev = setup(run_dir, data, split, windows)
    base = load_run(dense, run.data_dir)
    if base.cfg.vocab_size != run.cfg.vocab_size or base.cfg.block_size < run.cfg.block_size:
        raise ValueError(f"--dense={dense!r}: its vocab_size {base.cfg.vocab_size} / block_size "
                         f"{base.cfg.block_size} do not fit the run's ({run.cfg.vocab_size} / {run.cfg.block_size}): "
                         f"pass a model trained on the same tokenizer with at least the same context")
    out = collect(run.params, run.cfg, ev.x, ev.y, batch_size, keep=(), progress=progress, desc="looped")
    ref = collect(base.params, base.cfg, ev.x, ev.y, batch_size, keep=(), progress=progress, desc="dense")
    loss = ref["loss"].ravel()
    win = np.repeat(np.arange(len(ev.x)), ev.x.shape[1])
    rows = []
    for kind, depth in (("N", out["depth"].ravel()), ("ponder", out["ponder"].ravel())):
        rho, p = spearman(depth, loss)
        lo, hi = bootstrap_spearman(depth, loss, win, n_boot, seed)
        rows.append(dict(depth=kind, tokens=len(loss), rho=rho, ci_low=lo, ci_high=hi, p=p))
    edges = np.quantile(loss, [0.2, 0.4, 0.6, 0.8])
    bins = np.searchsorted(edges, loss, side="right")  # 0..4: the quintile of the dense loss
    depth = out["depth"].ravel()
    per_bin = [dict(quintile=q + 1, dense_loss_mean=float(loss[bins == q].mean()), tokens=int((bins == q).sum()),
                    mean_depth=float(depth[bins == q].mean()), looped_loss_mean=float(out["loss"].ravel()[bins == q]
                                                                                      .mean()))
               for q in range(5) if (bins == q).any()]
    md = (header("Depth vs a dense model's per-token loss", run, ev, split)
          + f"Dense baseline: `{base.path}` (checkpoint step {base.step}; {base.cfg.n_layer} layers, loss "
            f"{loss.mean():.3f} nats against the looped model's {out['loss'].mean():.3f}).\n\n"
          + "Spearman rho over every position (95% CIs resample windows; nan when the depth is constant):\n\n"
          + markdown_table(rows, digits=3) + "\n## Mean depth per quintile of the dense loss\n\n"
          + markdown_table(per_bin, digits=3))
    fig = _figure(per_bin, rows[0], f"{run.path} vs dense {base.path}")
    paths = write_outputs(run_dir, out_name("dense_loss", data, split), {"": rows, "by_quintile": per_bin}, md, fig)
    return dict(rhos=rows, per_quintile=per_bin, md=md, paths=paths)


def _figure(per_bin, rho_n, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot([b["dense_loss_mean"] for b in per_bin], [b["mean_depth"] for b in per_bin], "o-")
    ax.set_xlabel("dense model's loss (nats), quintile means")
    ax.set_ylabel("looped model's mean depth N")
    ax.set_title(f"rho = {rho_n['rho']:.3f} [{rho_n['ci_low']:.3f}, {rho_n['ci_high']:.3f}]", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
