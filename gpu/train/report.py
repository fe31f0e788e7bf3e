"""report.md of a run: the loss next to the unigram baseline, depth, its histogram and depth by topic."""
from __future__ import annotations

import io
import os

from reference.accounting import flops_per_token, param_counts
from reference.files import atomic_write_bytes, atomic_write_text
from reference.train import unigram_loss

from .data import scored_tokens


def depth_histogram_png(hist: list[int], title: str) -> bytes | None:
    """A bar chart of how many tokens halted at each step, as PNG bytes (None without matplotlib)."""
    try:
        import matplotlib.pyplot as plt  # the backend is matplotlib's choice (Agg without a display)
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    total = max(1, sum(hist))
    ax.bar(range(1, len(hist) + 1), [h / total for h in hist], color="#4c72b0")
    ax.set_xlabel("loop steps taken (N)")
    ax.set_ylabel("share of tokens")
    ax.set_xticks(range(1, len(hist) + 1))
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(run_dir, mc, tc, ev: dict, unigram: float, counts: dict, flops_at_depth: float) -> str:
    """Write RUN/report.md (and depth_hist.png with matplotlib) from the last evaluation `ev`; returns its path."""
    total = max(1, sum(ev["depth_hist"]))
    scored = (f", targets of topics {tc.ignore_topics} not scored" if tc.ignore_topics else "") + \
        (", documents cut by the window start not scored" if tc.whole_documents else "")
    lines = [
        f"# Run report: `{tc.preset}` ({mc.halt}, {mc.loop_scope} scope, max {mc.max_loops} loops)", "",
        "| metric | value |", "|---|---|",
        f"| validation cross-entropy (nats/token{scored}) | {ev['val_ce']:.4f} |",
        f"| unigram baseline (nats/token{scored}) | {unigram:.4f} |",
        f"| validation loss incl. halting terms | {ev['val_loss']:.4f} |",
        f"| mean depth (loop steps per group) | {ev['mean_depth']:.3f} of {mc.max_loops} |",
        f"| share of tokens at min_loops / max_loops | {ev['share_min']:.3f} / {ev['share_max']:.3f} |",
        f"| parameters: unique / non-embedding | {counts['unique']:,} / {counts['non_embedding']:,} |",
        f"| training FLOPs per token at the realized depth | {flops_at_depth:,.0f} |",
        f"| steps, batch x seq_len x accumulation | {tc.max_steps}, {tc.batch_size} x {tc.seq_len or mc.block_size} x {tc.grad_accum} |",
        "", "## Depth histogram", "", "| N | tokens | share |", "|---|---|---|",
    ]
    lines += [f"| {n} | {c} | {c / total:.3f} |" for n, c in enumerate(ev["depth_hist"], start=1)]
    png = depth_histogram_png(ev["depth_hist"], f"{tc.preset}: realized depth")
    if png:
        atomic_write_bytes(os.path.join(run_dir, "depth_hist.png"), png)
        lines += ["", "![depth histogram](depth_hist.png)"]
    deltas = ", ".join("-" if d is None else f"{d:.4f}" for d in ev["delta_per_step"])
    lines += ["", f"Mean relative change of the state per step (tokens still running): {deltas}"]
    if ev.get("depth_by_topic"):
        lines += ["", "## Depth by topic", "", "| topic | mean depth | std | tokens |", "|---|---|---|---|"]
        for name, d in sorted(ev["depth_by_topic"].items(), key=lambda kv: -kv[1]["mean"]):
            lines.append(f"| {name} | {d['mean']:.3f} | {d['std']:.3f} | {d['count']} |")
    path = os.path.join(run_dir, "report.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def banner(tc, mc, seq_len: int, device, world: int, resumed_at: int | None) -> str:
    """The line a run starts with: preset, halting, size, FLOPs per token, device, and where it resumes."""
    counts = param_counts(mc)
    origin = f"from {tc.init_from}" if tc.init_from else tc.preset  # --init-from: the file's architecture, not a preset
    return (f"adaloop: {origin} halt={mc.halt} scope={mc.loop_scope} max_loops={mc.max_loops} | "
            f"{counts['unique'] / 1e6:.2f}M params ({counts['non_embedding'] / 1e6:.2f}M non-embedding) | "
            f"{flops_per_token(mc, seq_len=seq_len) / 1e6:.1f} MFLOP/token (train, full depth) | "
            f"device={device} dtype={tc.dtype} world={world}"
            + (" | exit gate Stage II (all else frozen)" if tc.exit_stage2 else "")
            + (f" | curriculum over {tc.curriculum}* levels until step {tc.curriculum_steps}" if tc.curriculum else "")
            + (f" | resuming at step {resumed_at}" if resumed_at is not None else ""))


def finish(tc, mc, data, ev: dict, seq_len: int) -> None:
    """Write the report of a finished run next to the unigram baseline of its data, and print the summary line."""
    baseline = unigram_loss(*(scored_tokens(data, split) for split in ("train", "val")), mc.vocab_size)
    write_report(tc.out, mc, tc, ev, baseline, param_counts(mc), flops_per_token(mc, ev["mean_depth"], seq_len))
    print(f"val ce {ev['val_ce']:.4f} nats/token (unigram baseline {baseline:.4f}) | mean depth "
          f"{ev['mean_depth']:.2f} | report: {os.path.join(tc.out, 'report.md')}")
