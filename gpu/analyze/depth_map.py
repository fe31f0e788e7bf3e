"""`depth-map`: where in a given text does the model think longest?

Runs the model over a text file cut into block_size chunks (each chunk its own context) and records, per token,
the realized depth (loop steps, averaged over loop groups) and the halting weights of each step and group. Writes an
HTML page with every token coloured by its depth (hover: the halting weights), a PNG of the first tokens, a CSV of
every token and a Markdown summary with the deepest tokens.
"""
from __future__ import annotations

import html
import os

import numpy as np

from ..probe import collect, load_run
from ..stats import markdown_table
from .output import write_outputs
from .plotting import hex_colour, pyplot, text_figure


def read_text(text_file: str) -> str:
    """The text of --text FILE; ValueError when it is not a file."""
    if not os.path.isfile(text_file):
        raise ValueError(f"--text {text_file!r} is not a file")
    with open(text_file, encoding="utf-8") as f:
        return f.read()


def encode(tok, text: str, vocab_size: int, text_file: str) -> np.ndarray:
    """The text as token ids; ValueError for an empty text or ids beyond the model's vocab_size."""
    ids = np.asarray(tok.encode(text), np.int64)
    if ids.size == 0:
        raise ValueError(f"--text {text_file!r} holds no text")
    if ids.max() >= vocab_size:
        raise ValueError(f"the text encodes to ids up to {ids.max()}, beyond the model's vocab_size "
                         f"{vocab_size}: pass the run's tokenizer folder with --data")
    return ids


def depth_over_text(run, ids: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Depth (N,) and halting weights (N, G, K) of every token id, run in block_size chunks (the tail chunk shorter)."""
    cfg, T = run.cfg, run.cfg.block_size
    n_full = len(ids) // T
    parts = []
    if n_full:
        parts.append(collect(run.params, cfg, ids[:n_full * T].reshape(n_full, T), keep=("weights",),
                             progress=progress))
    if len(ids) % T:
        parts.append(collect(run.params, cfg, ids[n_full * T:][None], keep=("weights",)))
    depth = np.concatenate([p["depth"].ravel() for p in parts])
    weights = np.concatenate([p["weights"].reshape(-1, *p["weights"].shape[2:]) for p in parts])
    return depth, weights


def depth_map(run_dir, text_file: str, data: str | None = None, png_tokens: int = 500, name: str = "depth_map",
              progress: bool = True) -> dict:
    """Per-token depth over a text file: HTML heat map (title attribute = halting weights per step and group),
    PNG of the first png_tokens tokens, CSV of every token. The text is cut into block_size chunks, each run
    with its own context."""
    from ..data import load_tokenizer
    run = load_run(run_dir, data)
    text = read_text(text_file)
    tok = load_tokenizer(run.data_dir)
    ids = encode(tok, text, run.cfg.vocab_size, text_file)
    depth, weights = depth_over_text(run, ids, progress)
    pieces = [tok.decode([int(i)]) for i in ids]
    cfg = run.cfg
    K, G = cfg.max_loops, cfg.n_groups
    cmap = pyplot().get_cmap("YlOrRd")
    colour = lambda d: hex_colour(0.15 + 0.85 * (d - 1) / max(K - 1, 1), cmap)  # noqa: E731  (light for depth 1)

    def hover(i):
        w = "; ".join((f"group {g}: " if G > 1 else "") + " ".join(f"{k + 1}:{weights[i, g, k]:.2f}"
                      for k in range(K) if weights[i, g, k] > 0.005) for g in range(G))
        return f"{pieces[i]!r}  depth {depth[i]:.2f}  halting weights (step:weight) {w}"

    spans = []
    for i, p in enumerate(pieces):
        shown = html.escape(p).replace("\n", "\u21b5<br>")
        spans.append(f'<span style="background:{colour(depth[i])}" title="{html.escape(hover(i))}">'
                     f"{shown}</span>")
    legend = " ".join(f'<span style="background:{colour(k)};padding:0 6px">{k}</span>' for k in range(1, K + 1))
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
    fig = text_figure(pieces[:png_tokens], [colour(d) for d in depth[:png_tokens]],
                      f"{run.path}: realized depth per token (1 = light, {K} = dark)")
    paths = write_outputs(run_dir, name, {"": rows}, md, fig, extra={f"{name}.html": page.encode()})
    return dict(depth=depth, weights=weights, tokens=pieces, md=md, paths=paths)
