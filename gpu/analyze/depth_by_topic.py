"""`depth-by-topic`: does the model spend more loops on some topics or kinds of token than on others?

Measures the realized depth (loop steps N, averaged over loop groups) of every target position on held-out
windows, grouped two ways: by the label ("topic") of the token being predicted, and by the class of the input token
at the position (eot, space, number, word-start, word-piece, punct, other). Per group: token count, mean, std,
95% cluster-bootstrap CI of the mean and the share of decisions at each N = 1..K; and for every pair of groups the
difference of the means with its cluster-bootstrap CI (windows resampled, since tokens of a window are correlated).
"""
from __future__ import annotations

import numpy as np

from ..probe import collect
from ..stats import bootstrap_means, group_sums, markdown_table, pairwise_differences, percentile_ci
from .load import setup
from .output import header, out_name, write_outputs
from .plotting import pyplot

CLASS_NAMES = ["eot", "space", "number", "word-start", "word-piece", "punct", "other"]


def token_class(s: str, is_eot: bool) -> str:
    """Class of one decoded token: eot, space, number, word-start (leading space), word-piece, punct (no letter or
    digit), other (mixed, undecodable or empty)."""
    core = s.strip()
    if is_eot:
        return "eot"
    if "\ufffd" in s or not s:
        return "other"
    if not core:
        return "space"
    if core.isdigit():
        return "number"
    if core.isalpha():
        return "word-start" if s[0].isspace() else "word-piece"
    if not any(ch.isalnum() for ch in core):
        return "punct"
    return "other"


def token_classes(tok, vocab_size: int, eot_id: int) -> tuple[np.ndarray, list[str]]:
    """Class of every token id from its text (token_class). (V,) int, names."""
    ids = np.zeros(vocab_size, np.int64)
    for i in range(vocab_size):
        try:
            s = tok.decode([i])
        except Exception:  # ids past the tokenizer's vocabulary (a padded embedding table)
            s = "\ufffd"
        ids[i] = CLASS_NAMES.index(token_class(s, i == eot_id))
    return ids, list(CLASS_NAMES)


def group_depth_table(out, groups, names, K, n_boot, seed, kind):
    """Per group: tokens, mean, std, 95% CI of the mean, share of loop-group decisions at each N = 1..K; plus the
    pairwise differences of the means with cluster-bootstrap CIs."""
    depth = out["depth"]
    sums, counts = group_sums(depth, groups, len(names))
    boot = bootstrap_means(sums, counts, n_boot, seed)
    lo, hi = percentile_ci(boot)
    rows = []
    for i, name in enumerate(names):
        sel = groups == i
        if not sel.any():
            continue
        d, n = depth[sel], out["n_steps"][sel].ravel()
        hist = np.bincount(np.clip(n, 1, K), minlength=K + 1)[1:] / len(n)
        rows.append(dict(kind=kind, name=name, tokens=int(sel.sum()), mean=float(d.mean()), std=float(d.std()),
                         ci_low=float(lo[i]), ci_high=float(hi[i]),
                         **{f"share_N{k + 1}": float(h) for k, h in enumerate(hist)}))
    diffs = [dict(kind=kind, **r) for r in pairwise_differences(names, sums, counts, n_boot, seed)]
    return rows, diffs


def depth_by_topic(run_dir, windows: int = 256, split: str = "val", data: str | None = None, n_boot: int = 2000,
                   batch_size: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """Depth per topic and per token class (module docstring) over `windows` held-out windows. Writes
    depth_by_topic.{csv,md,png} and depth_by_topic_diffs.csv; returns dict(rows, diffs, md, paths)."""
    from ..data import load_tokenizer
    run, ev = setup(run_dir, data, split, windows)
    K = run.cfg.max_loops
    out = collect(run.params, run.cfg, ev.x, ev.y, batch_size, keep=(), progress=progress)
    tables, md = {}, header("Depth by topic and token class", run, ev, split)
    md += ("Depth = loop steps taken at a position. Topic = label of the predicted token; class = class of the input "
           "token. CIs: 95% percentile intervals of a bootstrap over windows (tokens of a window are correlated).\n\n")
    rows, diffs = [], []
    if ev.label is not None:
        r, d = group_depth_table(out, ev.label, ev.names, K, n_boot, seed, "topic")
        rows, diffs = rows + r, diffs + d
    cls_ids, cls_names = token_classes(load_tokenizer(run.data_dir), run.cfg.vocab_size, ev.eot_id)
    r, d = group_depth_table(out, cls_ids[ev.x], cls_names, K, n_boot, seed, "class")
    rows, diffs = rows + r, diffs + d
    cols = ["name", "tokens", "mean", "std", "ci_low", "ci_high"] + [f"share_N{k}" for k in range(1, K + 1)]
    for kind in ("topic", "class"):
        sel = [x for x in rows if x["kind"] == kind]
        if sel:
            md += f"## Depth by {kind}\n\n" + markdown_table(sel, cols, 3) + "\n"
            md += (f"### Pairwise differences of mean depth ({kind}; a - b, 95% CI)\n\n"
                   + markdown_table([x for x in diffs if x["kind"] == kind],
                                    ["a", "b", "diff", "ci_low", "ci_high", "excludes_zero"], 3) + "\n")
    tables[""], tables["diffs"] = rows, diffs
    fig = _figure(rows, K)
    paths = write_outputs(run_dir, out_name("depth_by_topic", data, split), tables, md, fig)
    return dict(rows=rows, diffs=diffs, md=md, paths=paths)


def _figure(rows, K):
    """One row of panels per kind (topic, class): mean depth with CI bars, and the share of tokens at each N."""
    plt = pyplot()
    kinds = [k for k in ("topic", "class") if any(x["kind"] == k for x in rows)]
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.2 * len(kinds)), squeeze=False)
    for ax_row, kind in zip(axes, kinds):
        sel = [x for x in rows if x["kind"] == kind]
        y = np.arange(len(sel))
        means = np.array([x["mean"] for x in sel])
        err = np.array([[x["mean"] - x["ci_low"] for x in sel], [x["ci_high"] - x["mean"] for x in sel]])
        ax_row[0].barh(y, means, xerr=np.nan_to_num(err), color="#4c72b0", capsize=3)
        ax_row[0].set_yticks(y, [x["name"] for x in sel])
        ax_row[0].set_xlabel("mean realized depth (95% CI)")
        ax_row[0].set_title(f"depth by {kind}")
        width = 0.8 / len(sel)
        for j, x in enumerate(sel):
            ax_row[1].bar(np.arange(1, K + 1) + (j - len(sel) / 2) * width, [x[f"share_N{k}"] for k in range(1, K + 1)],
                          width, label=x["name"])
        ax_row[1].set_xlabel("loop steps N")
        ax_row[1].set_ylabel("share of tokens")
        ax_row[1].set_xticks(range(1, K + 1))
        ax_row[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
