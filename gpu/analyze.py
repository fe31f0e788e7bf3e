"""`python -m gpu.analyze SUBCOMMAND RUN_DIR`: what a trained looped model does with its depth.

Each subcommand reads the newest checkpoint of a `python -m gpu.train` run, measures it on held-out windows of
the run's data (its val split unless --data/--split say otherwise) and writes, atomically, into RUN_DIR/analysis/:
NAME.csv (+ NAME_*.csv), NAME.md (the tables, also printed) and NAME.png.

    depth-by-topic   realized depth per label ("topic") and per token class: mean, std, histogram, 95% cluster-
                     bootstrap CIs of the pairwise differences of the means
    depth-map        --text FILE: HTML heat map over the text (colour = depth, hover = halting weights) + PNG
    convergence      per-step relative change of the state at forced depths up to 3K; spectral norms and the
                     local Lipschitz constant of the loop map (reference.contraction); flags a non-contractive loop
    calibration      loss against realized depth; under-/over-thinking rates against the same token's loss at
                     every forced depth 1..K
    extrapolate      --loops 1..3K: loss/accuracy at forced test-time depths beyond training, and a sweep of the
                     halting threshold (act_eps; converge_tol for converge halting)
    difficulty       synthetic task runs (gpu.tasks): Spearman rho of realized depth vs ground-truth difficulty

Depth of a token = the loop steps N spent at its position (averaged over loop groups for layer scope). The label of
a position is the label of the token it predicts (gpu.data.sample_batch); the token class is that of the input
token sitting there.
"""
from __future__ import annotations

import html
import io
import os
import sys

import numpy as np

from reference.files import atomic_write_bytes

from .cli import command_parser, print_result
from .probe import collect, eval_windows, load_run, params_for, with_halting, with_loops
from .stats import (bootstrap_means, bootstrap_spearman, group_sums, markdown_table, pairwise_differences,
                    percentile_ci, spearman, write_csv)


# ----------------------------------------------------------------------------- output
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_outputs(run_dir, name: str, tables: dict, md: str, fig=None, extra: dict | None = None) -> list[str]:
    """tables: suffix ('' for the main one) -> rows. Writes RUN/analysis/NAME[_suffix].csv, NAME.md, NAME.png
    and extra files (file name -> bytes), each atomically. Returns the paths."""
    out = os.path.join(os.fspath(run_dir), "analysis")
    os.makedirs(out, exist_ok=True)
    paths = [write_csv(os.path.join(out, f"{name}{'_' + s if s else ''}.csv"), rows) for s, rows in tables.items()]
    atomic_write_bytes(os.path.join(out, f"{name}.md"), md.encode())
    paths.append(os.path.join(out, f"{name}.md"))
    if fig is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        _plt().close(fig)
        atomic_write_bytes(os.path.join(out, f"{name}.png"), buf.getvalue())
        paths.append(os.path.join(out, f"{name}.png"))
    for fname, data in (extra or {}).items():
        atomic_write_bytes(os.path.join(out, fname), data)
        paths.append(os.path.join(out, fname))
    return paths


def header(title: str, run, ev, split: str) -> str:
    W, T = ev.x.shape
    return (f"# {title}\n\nrun `{run.path}` (checkpoint step {run.step}; {run.cfg.halt} halting, {run.cfg.loop_scope} "
            f"scope, max_loops K = {run.cfg.max_loops}) on `{run.data_dir}` {split}: {W} windows x {T} tokens.\n\n")


def _setup(run_dir, data, split, windows):
    run = load_run(run_dir, data)
    return run, eval_windows(run.data_dir, split, windows, run.cfg.block_size)


def out_name(base: str, data: str | None, split: str = "val") -> str:
    """Output file stem: `base`, suffixed with the data folder's name when --data points elsewhere than the run's
    own data and with the split when it is not val, so analyses of one run on several sets sit side by side."""
    name = base + (f"-{os.path.basename(os.path.normpath(data))}" if data else "")
    return name + (f"-{split}" if split != "val" else "")


def summarize(out: dict, ev) -> dict:
    """Mean loss, accuracy and depth over all targets; for synthetic tasks also over the answer tokens and the
    exact-match rate of whole answers (every answer token argmax-correct = greedy decoding gets it right)."""
    r = dict(mean_depth=float(out["depth"].mean()), loss=float(out["loss"].mean()), acc=float(out["correct"].mean()))
    if ev.task:
        ans = ev.answer
        r.update(answer_depth=float(out["depth"][ans].mean()), answer_loss=float(out["loss"][ans].mean()),
                 answer_acc=float(out["correct"][ans].mean()), exact_match=exact_match(out["correct"], ev))
    return r


def exact_match(correct: np.ndarray, ev) -> float:
    """Share of the problems whose document ends inside the window with every answer token correct."""
    key = np.arange(len(correct))[:, None] * 100000 + ev.problem_ids()
    mask = ev.answer & ev.complete()
    n = len(np.unique(key[mask]))
    return float("nan") if n == 0 else 1.0 - len(np.unique(key[mask & ~correct])) / n


# ----------------------------------------------------------------------------- depth by topic
def token_classes(tok, vocab_size: int, eot_id: int) -> tuple[np.ndarray, list[str]]:
    """Class of every token id from its text: eot, space, number, word-start (leading space), word-piece,
    punct (no letter or digit), other. (V,) int, names."""
    names = ["eot", "space", "number", "word-start", "word-piece", "punct", "other"]
    ids = np.zeros(vocab_size, np.int64)
    for i in range(vocab_size):
        try:
            s = tok.decode([i])
        except Exception:  # ids past the tokenizer's vocabulary (a padded embedding table)
            s = "\ufffd"
        core = s.strip()
        if i == eot_id:
            c = "eot"
        elif "\ufffd" in s or not s:
            c = "other"
        elif not core:
            c = "space"
        elif core.isdigit():
            c = "number"
        elif core.isalpha():
            c = "word-start" if s[0].isspace() else "word-piece"
        elif not any(ch.isalnum() for ch in core):
            c = "punct"
        else:
            c = "other"
        ids[i] = names.index(c)
    return ids, names


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
    from .data import load_tokenizer
    run, ev = _setup(run_dir, data, split, windows)
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
    plt = _plt()
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
    paths = write_outputs(run_dir, out_name("depth_by_topic", data, split), tables, md, fig)
    return dict(rows=rows, diffs=diffs, md=md, paths=paths)


# ----------------------------------------------------------------------------- depth map
def _colour(v: float, cmap) -> str:
    r, g, b, _ = cmap(v)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def depth_map(run_dir, text_file: str, data: str | None = None, png_tokens: int = 500, name: str = "depth_map",
              progress: bool = True) -> dict:
    """Per-token depth over a text file: HTML heat map (title attribute = halting weights per step and group),
    PNG of the first png_tokens tokens, CSV of every token. The text is cut into block_size chunks, each run
    with its own context."""
    from .data import load_tokenizer
    run = load_run(run_dir, data)
    if not os.path.isfile(text_file):
        raise ValueError(f"--text {text_file!r} is not a file")
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    tok = load_tokenizer(run.data_dir)
    ids = np.asarray(tok.encode(text), np.int64)
    if ids.size == 0:
        raise ValueError(f"--text {text_file!r} holds no text")
    if ids.max() >= run.cfg.vocab_size:
        raise ValueError(f"the text encodes to ids up to {ids.max()}, beyond the model's vocab_size "
                         f"{run.cfg.vocab_size}: pass the run's tokenizer folder with --data")
    cfg, T = run.cfg, run.cfg.block_size
    n_full = len(ids) // T
    parts = []
    if n_full:
        parts.append(collect(run.params, cfg, ids[:n_full * T].reshape(n_full, T), keep=("weights",),
                             progress=progress))
    if len(ids) % T:
        parts.append(collect(run.params, cfg, ids[n_full * T:][None], keep=("weights",)))
    depth = np.concatenate([p["depth"].ravel() for p in parts])                      # (N,)
    weights = np.concatenate([p["weights"].reshape(-1, *p["weights"].shape[2:]) for p in parts])  # (N, G, K)
    pieces = [tok.decode([int(i)]) for i in ids]
    K, G = cfg.max_loops, cfg.n_groups
    plt = _plt()
    cmap = plt.get_cmap("YlOrRd")
    norm = lambda d: 0.15 + 0.85 * (d - 1) / max(K - 1, 1)  # noqa: E731  (light colour for depth 1)

    def hover(i):
        w = "; ".join((f"group {g}: " if G > 1 else "") + " ".join(f"{k + 1}:{weights[i, g, k]:.2f}"
                      for k in range(K) if weights[i, g, k] > 0.005) for g in range(G))
        return f"{pieces[i]!r}  depth {depth[i]:.2f}  halting weights (step:weight) {w}"

    spans = []
    for i, p in enumerate(pieces):
        shown = html.escape(p).replace("\n", "\u21b5<br>")
        spans.append(f'<span style="background:{_colour(norm(depth[i]), cmap)}" title="{html.escape(hover(i))}">'
                     f"{shown}</span>")
    legend = " ".join(f'<span style="background:{_colour(norm(k), cmap)};padding:0 6px">{k}</span>'
                      for k in range(1, K + 1))
    page = (f"<!doctype html><meta charset='utf-8'><title>depth map: {html.escape(run.path)}</title>"
            f"<body style='font-family:sans-serif;max-width:60em;margin:2em auto'><h2>Realized depth per token</h2>"
            f"<p>run <code>{html.escape(run.path)}</code> step {run.step}, {cfg.halt} halting, K = {K}. "
            f"Hover a token for its halting weights. Depth: {legend}. Mean depth {depth.mean():.3f} over {len(ids)} "
            f"tokens.</p><pre style='white-space:pre-wrap;line-height:1.6;font-size:14px'>{''.join(spans)}</pre>")
    rows = [dict(index=i, token=p, depth=float(depth[i]),
                 **{f"w_g{g}_k{k + 1}": float(weights[i, g, k]) for g in range(G) for k in range(K)})
            for i, p in enumerate(pieces)]
    order = np.argsort(-depth, kind="stable")[:20]
    md = (f"# Depth map of `{text_file}`\n\nrun `{run.path}` step {run.step}; {len(ids)} tokens, mean depth "
          f"{depth.mean():.3f}, depth histogram "
          f"{np.bincount(np.rint(depth).astype(int), minlength=K + 1)[1:].tolist()}."
          f"\n\nOpen `{name}.html` for the heat map. Deepest tokens:\n\n"
          + markdown_table([dict(index=int(i), token=repr(pieces[i]), depth=float(depth[i])) for i in order], digits=2))
    fig = _text_figure(pieces[:png_tokens], depth[:png_tokens], [_colour(norm(d), cmap) for d in depth[:png_tokens]],
                       f"{run.path}: realized depth per token (1 = light, {K} = dark)")
    paths = write_outputs(run_dir, name, {"": rows}, md, fig, extra={f"{name}.html": page.encode()})
    return dict(depth=depth, weights=weights, tokens=pieces, md=md, paths=paths)


def _text_figure(pieces, depth, colours, title, width_chars: int = 100):
    """Tokens laid out as monospace text, each on a box of its colour."""
    lines, line, used = [], [], 0
    for p, c in zip(pieces, colours):
        p = p.replace("\t", "    ")
        for j, chunk in enumerate(p.split("\n")):
            if j > 0:
                line.append(("\u21b5", c))
                lines.append(line)
                line, used = [], 0
            if chunk:
                if used + len(chunk) > width_chars and line:
                    lines.append(line)
                    line, used = [], 0
                line.append((chunk, c))
                used += len(chunk)
    lines.append(line)
    plt = _plt()
    fs = 8
    cw, lh = fs * 0.602 / 72, fs * 1.7 / 72  # inches per character (DejaVu Sans Mono advance) and per line
    fig = plt.figure(figsize=((width_chars + 2) * cw, (len(lines) + 2) * lh))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width_chars + 2)
    ax.set_ylim(len(lines) + 2, 0)
    ax.axis("off")
    ax.text(1, 0.8, title, fontsize=fs, family="sans-serif", parse_math=False)
    for y, ln in enumerate(lines, start=1):
        x = 1
        for chunk, c in ln:
            ax.add_patch(plt.Rectangle((x, y + 0.5), len(chunk), 0.95, color=c, linewidth=0))
            ax.text(x, y + 1.2, chunk, family="DejaVu Sans Mono", fontsize=fs, parse_math=False)
            x += len(chunk)
    return fig


# ----------------------------------------------------------------------------- convergence
def convergence(run_dir, windows: int = 64, loops: int | None = None, split: str = "val", data: str | None = None,
                lipschitz_windows: int = 2, lipschitz_iters: int = 50, batch_size: int = 32,
                progress: bool = True) -> dict:
    """Per-step relative change ||s_k - s_{k-1}|| / ||s_{k-1}|| at a forced depth L (default 3K) over all tokens,
    the same over the tokens still running under the trained halting, spectral norms of the core weights, and per
    loop group the local Lipschitz constant of Phi(s) = s + gamma * r(s) at the state after K steps and the
    fixed-point residual ||Phi(s_K) - s_K|| / ||s_K|| (reference.contraction, float64 numpy).
    Verdict: contractive when L < 1 (Banach: iterating converges); flagged non-contractive when L >= 1 and the
    mean change does not shrink from step K to step L (the loop wanders instead of settling)."""
    from reference import contraction
    run, ev = _setup(run_dir, data, split, windows)
    cfg, K = run.cfg, run.cfg.max_loops
    L = loops or 3 * K
    forced = collect(run.params, with_loops(cfg, L), ev.x, None, batch_size, keep=("deltas",), progress=progress,
                     desc=f"forced {L} loops")
    adaptive = collect(run.params, cfg, ev.x, None, batch_size, keep=("deltas",), progress=progress,
                       desc="trained halting")
    d = forced["deltas"]  # (W, T, G, L)
    running = np.arange(1, K + 1) <= adaptive["n_steps"][..., None]  # (W, T, G, K)
    cnt = running.sum(axis=(0, 1, 2))
    run_mean = np.where(cnt > 0, (adaptive["deltas"] * running).sum(axis=(0, 1, 2)) / np.maximum(cnt, 1), np.nan)
    flat = d.reshape(-1, L)
    rows = [dict(step=k + 1, forced_mean=float(flat[:, k].mean()), forced_median=float(np.median(flat[:, k])),
                 forced_p10=float(np.percentile(flat[:, k], 10)), forced_p90=float(np.percentile(flat[:, k], 90)),
                 trained_running_mean=float(run_mean[k]) if k < K else float("nan"),
                 trained_running_tokens=int(cnt[k]) if k < K else 0) for k in range(L)]
    p64 = params_for({k: v.astype(np.float64) for k, v in run.params.items()}, cfg)
    spec = [dict(weight=n, spectral_norm=s) for n, s in contraction.spectral_norms(p64, cfg).items()]
    toks = ev.x[:lipschitz_windows]
    groups = []
    for g in range(cfg.n_groups):
        lip = contraction.lipschitz(p64, toks, cfg, group=g, iters=lipschitz_iters)
        res = contraction.fixed_point_residual(p64, toks, cfg, group=g)
        gamma = np.abs(p64[f"loop.{g}.step_scale"])
        groups.append(dict(group=g, lipschitz=float(lip), fixed_point_residual=float(res.mean()),
                           step_scale_mean_abs=float(gamma.mean()), step_scale_max_abs=float(gamma.max())))
    mean_k, mean_l = flat[:, K - 1].mean(), flat[:, L - 1].mean()
    rate = float((mean_l / mean_k) ** (1 / (L - K))) if L > K and mean_k > 0 else float("nan")
    lip_max = max(g["lipschitz"] for g in groups)
    certified = lip_max < 1
    non_contractive = not certified and not (rate < 1)
    short = "contractive" if certified else "NON-CONTRACTIVE" if non_contractive else "not certified contractive"
    verdict = ("contractive: Lipschitz < 1, the loop map is a local contraction" if certified else
               f"NON-CONTRACTIVE: Lipschitz {lip_max:.3f} >= 1 and the mean change does not shrink past K "
               f"(rate {rate:.3f} per step)" if non_contractive else
               f"not a certified contraction (Lipschitz {lip_max:.3f} >= 1), but the mean change shrinks past K "
               f"(geometric rate {rate:.3f} per step)")
    summary = dict(K=K, forced_loops=L, mean_delta_at_K=float(mean_k), mean_delta_at_L=float(mean_l),
                   tail_rate=rate, lipschitz_max=float(lip_max), non_contractive=bool(non_contractive), verdict=verdict)
    md = header("Convergence of the loop", run, ev, split)
    md += f"**Verdict: {verdict}.**\n\n"
    md += ("Relative change of the state per step, `||s_k - s_(k-1)|| / ||s_(k-1)||`: forced = every token runs "
           f"{L} steps (fixed halting); trained = the run's own halting, over the tokens still running.\n\n")
    md += markdown_table(rows, digits=4) + "\n## Loop map per group\n\n"
    md += (f"Local Lipschitz constant of the loop map at the state after K = {K} steps, over "
           f"{toks.shape[0]} windows ({lipschitz_iters} power iterations), and fixed-point residual.\n\n")
    md += markdown_table(groups, digits=4) + "\n## Spectral norms of the core weights\n\n"
    md += markdown_table(spec, digits=3)
    plt = _plt()
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
    a1.set_title(f"{short}: Lipschitz {lip_max:.2f}, tail rate {rate:.3f}/step", fontsize=9)
    a1.legend(fontsize=7)
    top = sorted(spec, key=lambda s: -s["spectral_norm"])[:15]
    a2.barh(range(len(top)), [s["spectral_norm"] for s in top], color="#4c72b0")
    a2.set_yticks(range(len(top)), [s["weight"] for s in top], fontsize=6)
    a2.set_xlabel("spectral norm")
    a2.set_title("spectral norms of the core weights", fontsize=9)
    fig.tight_layout()
    tables = {"": rows, "groups": groups, "spectral": spec, "summary": [summary]}
    paths = write_outputs(run_dir, out_name("convergence", data, split), tables, md, fig)
    if non_contractive:
        print(f"WARNING: {verdict}", file=sys.stderr)
    return dict(rows=rows, groups=groups, spectral=spec, summary=summary, md=md, paths=paths)


# ----------------------------------------------------------------------------- calibration
def calibration(run_dir, windows: int = 128, tol: float = 0.05, split: str = "val", data: str | None = None,
                batch_size: int = 32, progress: bool = True) -> dict:
    """Does the halting spend loops where they pay?  For every token: its realized depth N (rounded mean over
    groups), its loss under the trained halting, and its loss L_k at every forced depth k = 1..K.
    best depth k* = the smallest k with L_k <= min_j L_j + tol (tol in nats):
      under-thinking: N < k*  (stopping at N costs more than tol nats against a depth the model could reach)
      over-thinking:  N > k*  (k* < N steps would have been within tol of the best: the extra loops bought < tol)
      calibrated:     N == k*
    Synthetic tasks: answer tokens only. Also Spearman rho of depth against the trained loss and against the gain
    L_1 - L_N, and the mean loss per realized depth."""
    run, ev = _setup(run_dir, data, split, windows)
    cfg, K = run.cfg, run.cfg.max_loops
    from tqdm import tqdm
    trained = collect(run.params, cfg, ev.x, ev.y, batch_size, keep=(), progress=progress, desc="trained halting")
    forced = np.stack([collect(run.params, with_loops(cfg, k), ev.x, ev.y, batch_size, keep=())["loss"]
                       for k in tqdm(range(1, K + 1), desc="forced depths", disable=not progress, leave=False)], -1)
    sel = ev.answer
    N = np.clip(np.rint(trained["depth"][sel]).astype(int), 1, K)  # (n,)
    Lk, Lt = forced[sel], trained["loss"][sel]                      # (n, K), (n,)
    best = Lk.min(axis=1)
    kstar = np.argmax(Lk <= best[:, None] + tol, axis=1) + 1       # first k within tol of the best
    under, over = N < kstar, N > kstar
    at_n = Lk[np.arange(len(N)), N - 1]
    rho_loss = spearman(trained["depth"][sel], Lt)
    rho_gain = spearman(trained["depth"][sel], Lk[:, 0] - at_n)
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
    md = header("Halting calibration", run, ev, split)
    md += (f"Tokens: {'answer tokens' if ev.task else 'all targets'}. Best depth k* = smallest forced depth whose loss "
           f"is within tol = {tol} nats of the token's best forced loss. Under-thinking: N < k*; over-thinking: N > k*."
           "\n\n" + markdown_table([rates], digits=3)
           + "\n## Loss by realized depth (trained halting and forced depths)\n\n"
           + markdown_table(by_depth, digits=3))
    plt = _plt()
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
    paths = write_outputs(run_dir, out_name("calibration", data, split), {"": [rates], "by_depth": by_depth}, md, fig)
    return dict(rates=rates, by_depth=by_depth, md=md, paths=paths)


# ----------------------------------------------------------------------------- extrapolation
def parse_loops(spec: str, K: int) -> list[int]:
    """'1..3K' -> [1, .., 3K]; '1,2,8' -> [1, 2, 8]; K stands for the run's max_loops."""
    def val(t):
        t = t.strip()
        return int(t[:-1] or 1) * K if t.endswith("K") else int(t)
    try:
        if ".." in spec:
            a, b = spec.split("..")
            out = list(range(val(a), val(b) + 1))
        else:
            out = [val(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--loops {spec!r}: expected A..B or a comma list of ints (K = max_loops, e.g. 1..3K)") \
            from None
    if not out or min(out) < 1:
        raise ValueError(f"--loops {spec!r}: loop counts must be >= 1")
    return out


def extrapolate(run_dir, loops: str = "1..3K", thresholds: str | None = None, windows: int = 128, split: str = "val",
                data: str | None = None, batch_size: int = 32, progress: bool = True) -> dict:
    """Loss and accuracy at forced test-time depths (fixed halting, output = the k-th state) including depths
    beyond the training max K, then the trained halting rule with max_loops = max(loops) at other thresholds
    (act_eps for act/pondernet, converge_tol for converge; none for fixed). Per label accuracy at each depth."""
    from tqdm import tqdm
    run, ev = _setup(run_dir, data, split, windows)
    cfg, K = run.cfg, run.cfg.max_loops
    ks = parse_loops(loops, K)
    knob = {"act": "act_eps", "pondernet": "act_eps", "converge": "converge_tol"}.get(cfg.halt)
    default = {"act_eps": "0.5,0.3,0.2,0.1,0.05,0.02,0.01,0.003,0.001",
               "converge_tol": "0.3,0.2,0.1,0.05,0.02,0.01,0.005"}
    values = [float(v) for v in (thresholds or default.get(knob, "")).split(",") if v.strip()] if knob else []
    rows, by_label = [], []
    sel = ev.answer
    for k in tqdm(ks, desc="forced depths", disable=not progress, leave=False):
        out = collect(run.params, with_loops(cfg, k), ev.x, ev.y, batch_size, keep=())
        rows.append(dict(mode="forced", loops=k, threshold=float("nan"), beyond_training=k > K, **summarize(out, ev)))
        if ev.label is not None:
            for i, name in enumerate(ev.names):
                m = (ev.label == i) & sel
                if m.any():
                    by_label.append(dict(loops=k, label=name, tokens=int(m.sum()), acc=float(out["correct"][m].mean()),
                                         loss=float(out["loss"][m].mean())))
    Lmax = max(ks + [K])
    trained = collect(run.params, cfg, ev.x, ev.y, batch_size, keep=())
    rows.append(dict(mode="trained", loops=K, threshold=float(getattr(cfg, knob)) if knob else float("nan"),
                     beyond_training=False, **summarize(trained, ev)))
    for v in tqdm(values, desc=f"{knob} sweep", disable=not progress or not values, leave=False):
        out = collect(run.params, with_halting(cfg, Lmax, **{knob: v}), ev.x, ev.y, batch_size, keep=())
        rows.append(dict(mode=f"{cfg.halt} {knob}", loops=Lmax, threshold=v, beyond_training=Lmax > K,
                         **summarize(out, ev)))
    md = header("Test-time depth extrapolation", run, ev, split)
    md += (f"forced: every token runs exactly `loops` steps (the training max is K = {K}); trained: the run's halting "
           f"as trained; `{knob}` rows: the trained halting with max_loops = {Lmax} and another threshold. "
           + ("answer_* and exact_match count the answer tokens of the synthetic task. " if ev.task else "")
           + "\n\n" + markdown_table(rows, digits=4))
    if by_label:
        labels = list(dict.fromkeys(r["label"] for r in by_label))
        pivot = [dict(label=lab, **{f"acc@{r['loops']}": r["acc"] for r in by_label if r["label"] == lab})
                 for lab in labels]
        md += "\n## Accuracy by label at each forced depth\n\n" + markdown_table(pivot, digits=3)
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    f = [r for r in rows if r["mode"] == "forced"]
    acc_key = "exact_match" if ev.task else "acc"
    a1.plot([r["loops"] for r in f], [r["answer_loss" if ev.task else "loss"] for r in f], "o-", color="#c44e52")
    a1.set_xlabel("forced test-time loops")
    a1.set_ylabel(("answer " if ev.task else "") + "loss (nats)", color="#c44e52")
    a1.axvline(K, color="gray", ls=":")
    b1 = a1.twinx()
    b1.plot([r["loops"] for r in f], [r[acc_key] for r in f], "s-", color="#4c72b0")
    b1.set_ylabel(acc_key.replace("_", " "), color="#4c72b0")
    a1.set_title(f"forced depth (dotted: training max K={K})")
    sweep = [r for r in rows if r["mode"] not in ("forced",)]
    if len(sweep) > 1:
        lk = "answer_loss" if ev.task else "loss"
        pts = sorted(sweep[1:], key=lambda r: r["mean_depth"])
        a2.plot([r["mean_depth"] for r in pts], [r[lk] for r in pts], "o:", label=f"{knob} sweep")
        a2.plot([sweep[0]["mean_depth"]], [sweep[0][lk]], "*", ms=12, label="as trained")
        for r in pts:
            a2.annotate(f"{r['threshold']:g}", (r["mean_depth"], r[lk]), fontsize=7)
        a2.legend(fontsize=7)
        a2.set_xlabel("mean realized depth")
        a2.set_ylabel(("answer " if ev.task else "") + "loss (nats)")
        a2.set_title(f"{knob} sweep (max_loops={Lmax})")
    else:
        a2.text(0.5, 0.5, f"no threshold to sweep for {cfg.halt} halting", ha="center", transform=a2.transAxes)
        a2.axis("off")
    fig.tight_layout()
    paths = write_outputs(run_dir, out_name("extrapolate", data, split), {"": rows, "by_label": by_label}, md, fig)
    return dict(rows=rows, by_label=by_label, md=md, paths=paths)


# ----------------------------------------------------------------------------- difficulty
def parse_where(where: str | None, measures: dict) -> tuple[str, int] | None:
    """'MEASURE=VALUE' -> (measure, value); ValueError naming the measures of the folder."""
    if not where:
        return None
    name, _, value = where.partition("=")
    if name not in measures or not value.strip().isdigit():
        raise ValueError(f"--where={where!r}: expected MEASURE=VALUE with MEASURE one of {sorted(measures)} "
                         f"and VALUE an integer")
    return name, int(value)


def difficulty(run_dir, windows: int = 512, split: str = "val", data: str | None = None, n_boot: int = 300,
               batch_size: int = 32, seed: int = 0, progress: bool = True, where: str | None = None) -> dict:
    """Spearman rho between realized depth and each ground-truth difficulty measure of a synthetic task
    (gpu.tasks), over answer tokens (token level) and over problems (mean depth over a problem's answer tokens
    vs the largest value of the measure in it), with cluster-bootstrap CIs; mean depth and accuracy per value.
    where='MEASURE=VALUE' keeps only the answer tokens with that value (e.g. significant=1: no padding zeros)."""
    run, ev = _setup(run_dir, data, split, windows)
    if not ev.task:
        raise ValueError(f"{run.data_dir!r} is not a synthetic task folder: `difficulty` needs a run trained on "
                         f"`python -m gpu.tasks make TASK --out DIR` data (or --data DIR of one)")
    cond = parse_where(where, ev.measures)
    out = collect(run.params, run.cfg, ev.x, ev.y, batch_size, keep=(), progress=progress)
    na, depth = ev.task["na"], out["depth"]
    win = np.broadcast_to(np.arange(len(depth))[:, None], depth.shape)
    key = win * 100000 + ev.problem_ids()
    keep = np.ones(depth.shape, bool) if cond is None else ev.measures[cond[0]] == cond[1]
    rhos, per_value = [], []
    for name, m in ev.measures.items():
        if cond and name == cond[0]:
            continue  # constant on the kept tokens
        sel = (m != na) & keep
        if not sel.any():
            raise ValueError(f"--where={where!r} keeps no answer token of measure {name!r}")
        v, w = m[sel], win[sel]
        keys, inv = np.unique(key[sel], return_inverse=True)  # problems
        pv = np.zeros(len(keys))
        np.maximum.at(pv, inv, v)
        pw = np.zeros(len(keys), np.int64)
        pw[inv] = w
        for kind, dd in (("N", depth), ("ponder", out["ponder"])):
            d = dd[sel]
            rho, p = spearman(d, v)
            lo, hi = bootstrap_spearman(d, v, w, n_boot, seed)
            pd = np.bincount(inv, weights=d) / np.bincount(inv)
            prho, pp = spearman(pd, pv)
            plo, phi = bootstrap_spearman(pd, pv, pw, n_boot, seed)
            rhos.append(dict(measure=name, depth=kind, label_measure=name == ev.task["label_measure"],
                             tokens=int(sel.sum()), rho_token=rho, ci_low=lo, ci_high=hi, p_token=p,
                             problems=len(keys), rho_problem=prho, ci_low_problem=plo, ci_high_problem=phi,
                             p_problem=pp))
        d, pond = depth[sel], out["ponder"][sel]
        for val in np.unique(v):
            s = v == val
            per_value.append(dict(measure=name, value=int(val), tokens=int(s.sum()), mean_depth=float(d[s].mean()),
                                  std_depth=float(d[s].std()), mean_ponder=float(pond[s].mean()),
                                  acc=float(out["correct"][sel][s].mean()), loss=float(out["loss"][sel][s].mean())))
    md = header(f"Depth vs ground-truth difficulty ({ev.task['name']})", run, ev, split)
    if cond:
        md += f"Only the answer tokens with {cond[0]} = {cond[1]}.\n\n"
    md += ("Spearman rho of depth against each difficulty measure: token level over answer tokens, problem "
           "level = mean depth over a problem's answer tokens vs the largest value in it. 95% CIs resample windows. "
           "Depth `N` is the realized number of loop steps; `ponder` is the ponder cost (ACT: N + R, the remainder "
           "breaking ties between tokens of equal N; PonderNet: the expected halting step E[n]; fixed/converge: N). "
           "rho is nan when the depth (or the measure) is constant.\n\n" + markdown_table(rhos, digits=3)
           + "\n## Depth and accuracy per difficulty value\n\n" + markdown_table(per_value, digits=3))
    plt = _plt()
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
    fig.suptitle(f"{ev.task['name']}: depth vs difficulty ({run.path})", fontsize=9)
    fig.tight_layout()
    stem = out_name("difficulty", data, split) + (f"-{cond[0]}{cond[1]}" if cond else "")
    paths = write_outputs(run_dir, stem, {"": rhos, "by_value": per_value}, md, fig)
    return dict(rhos=rhos, per_value=per_value, md=md, paths=paths)


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    ap, sub = command_parser("python -m gpu.analyze", __doc__)

    def add(name, help_, windows):
        p = sub.add_parser(name, help=help_)
        p.add_argument("run", help="run folder written by python -m gpu.train")
        p.add_argument("--data", default=None, help="data folder (default: the run's own)")
        if windows:
            p.add_argument("--windows", type=int, default=windows, help="held-out windows of block_size tokens")
            p.add_argument("--split", default="val", choices=["train", "val"])
            p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--no-progress", action="store_true")
        return p

    p = add("depth-by-topic", "depth per label and token class with bootstrap CIs", 256)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p = add("depth-map", "HTML + PNG heat map of depth over a text", 0)
    p.add_argument("--text", required=True, help="text file")
    p.add_argument("--name", default="depth_map", help="output file name stem")
    p = add("convergence", "per-step deltas, spectral norms, Lipschitz estimate", 64)
    p.add_argument("--loops", type=int, default=None, help="forced depth for the delta curve (default 3K)")
    p.add_argument("--lipschitz-iters", type=int, default=50)
    p = add("calibration", "loss vs depth, under-/over-thinking", 128)
    p.add_argument("--tol", type=float, default=0.05, help="nats: how close to the best forced loss counts as best")
    p = add("extrapolate", "loss/accuracy vs test-time loops and halting threshold", 128)
    p.add_argument("--loops", default="1..3K", help="A..B or a comma list; K = the run's max_loops")
    p.add_argument("--thresholds", default=None, help="comma list of act_eps (or converge_tol) values")
    p = add("difficulty", "Spearman rho of depth vs ground-truth difficulty (synthetic tasks)", 512)
    p.add_argument("--boot", type=int, default=300, help="bootstrap resamples")
    p.add_argument("--where", default=None, help="MEASURE=VALUE: only answer tokens with this value, e.g. "
                                                 "significant=1 (addition without its padding zeros)")
    a = ap.parse_args(argv)
    common = dict(data=a.data, progress=not a.no_progress)
    if getattr(a, "windows", 1) < 1:
        ap.error("--windows must be >= 1")
    if hasattr(a, "windows"):
        common.update(windows=a.windows, split=a.split, batch_size=a.batch_size)
    commands = {"depth-by-topic": lambda: depth_by_topic(a.run, n_boot=a.boot, **common),
                "depth-map": lambda: depth_map(a.run, a.text, name=a.name, **common),
                "convergence": lambda: convergence(a.run, loops=a.loops, lipschitz_iters=a.lipschitz_iters, **common),
                "calibration": lambda: calibration(a.run, tol=a.tol, **common),
                "extrapolate": lambda: extrapolate(a.run, loops=a.loops, thresholds=a.thresholds, **common),
                "difficulty": lambda: difficulty(a.run, n_boot=a.boot, where=a.where, **common)}
    return print_result(commands[a.cmd])


if __name__ == "__main__":
    sys.exit(main())
