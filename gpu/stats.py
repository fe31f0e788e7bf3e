"""Small statistics for the analyses: group means with a cluster bootstrap, Spearman's rho, tables to disk.

Tokens of one window are not independent (they share a document and an attention context), so every
confidence interval here resamples whole windows (a cluster bootstrap, Efron & Tibshirani 1993, ch. 8),
never single tokens: the percentile interval of the statistic over `n_boot` resamples of the windows.
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from reference.files import atomic_write_bytes


def group_sums(values: np.ndarray, groups: np.ndarray, n_groups: int, mask: np.ndarray | None = None):
    """Per window and group: sum of values and count. values, groups, mask: (W, T) -> two (W, n_groups) arrays."""
    W = values.shape[0]
    keep = np.ones(values.shape, bool) if mask is None else mask
    rows = np.broadcast_to(np.arange(W)[:, None], values.shape)[keep]
    sums = np.zeros((W, n_groups))
    counts = np.zeros((W, n_groups))
    np.add.at(sums, (rows, groups[keep]), values[keep])
    np.add.at(counts, (rows, groups[keep]), 1)
    return sums, counts


def bootstrap_means(sums: np.ndarray, counts: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Group means over n_boot resamples (with replacement) of the windows: (n_boot, n_groups), nan where a
    resample holds no token of a group."""
    rng = np.random.default_rng(seed)
    W = sums.shape[0]
    out = np.empty((n_boot, sums.shape[1]))
    for i in range(0, n_boot, 256):  # chunks keep the (chunk, W, groups) gather small
        idx = rng.integers(0, W, (min(256, n_boot - i), W))
        s, c = sums[idx].sum(axis=1), counts[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i:i + len(idx)] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0):
    """(low, high) percentile interval of bootstrap samples, ignoring nan (all-nan columns give nan)."""
    import warnings
    a = (1 - level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": a group absent from every resample
        return np.nanpercentile(samples, a, axis=axis), np.nanpercentile(samples, 100 - a, axis=axis)


def pairwise_differences(names, sums, counts, n_boot=2000, seed=0, level=0.95) -> list[dict]:
    """mean_a - mean_b for every pair of groups present, with its cluster-bootstrap percentile CI and whether the
    interval excludes zero."""
    present = [i for i in range(len(names)) if counts[:, i].sum() > 0]
    means = sums.sum(0) / np.maximum(counts.sum(0), 1)
    boot = bootstrap_means(sums, counts, n_boot, seed)
    rows = []
    for a_i, a in enumerate(present):
        for b in present[a_i + 1:]:
            lo, hi = percentile_ci(boot[:, a] - boot[:, b], level)
            rows.append(dict(a=names[a], b=names[b], diff=float(means[a] - means[b]), ci_low=float(lo),
                             ci_high=float(hi), excludes_zero=bool(lo > 0 or hi < 0)))
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation (scipy.stats.spearmanr, ties get average ranks) and its two-sided p-value;
    (nan, nan) when either side is constant or there are fewer than 3 points."""
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan"), float("nan")
    r = spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def bootstrap_spearman(x, y, window: np.ndarray, n_boot: int = 300, seed: int = 0, level: float = 0.95):
    """Cluster-bootstrap percentile CI of Spearman's rho: resample the windows (window: (N,) window id of each
    point). Returns (low, high); nan when rho is undefined."""
    rng = np.random.default_rng(seed)
    x, y, window = np.asarray(x, float), np.asarray(y, float), np.asarray(window)
    ids, inverse = np.unique(window, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    rhos = []
    for _ in range(n_boot):
        take = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        rhos.append(spearman(x[take], y[take])[0])
    return tuple(float(v) for v in percentile_ci(np.asarray(rhos), level))


# ----------------------------------------------------------------------------- tables
def fmt(v, digits: int = 4) -> str:
    """One table cell: yes/no for booleans, integers as they are, floats with `digits` decimals (nan as nan)."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    """A Markdown table of rows (dicts), with `columns` (default: the first row's keys) in order."""
    if not rows:
        return "(no rows)\n"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, ""), digits).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_bytes(rows: list[dict]) -> bytes:
    """CSV of rows (dicts) with every key seen in any row as a column, in order of first appearance."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def write_csv(path, rows: list[dict]) -> str:
    """Write csv_bytes(rows) to path atomically; returns the path."""
    atomic_write_bytes(path, csv_bytes(rows))
    return os.fspath(path)
