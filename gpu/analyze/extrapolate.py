"""`extrapolate`: do extra loops at test time help, beyond the depth the model was trained for?

Measures loss, accuracy (and on synthetic tasks the answer-token loss/accuracy and exact match of whole answers) at
forced test-time depths (fixed halting: every token runs exactly k steps, output = the k-th state), including depths
beyond the training max K; then the trained halting rule with max_loops = the largest depth at other values of its
threshold (the rule's `threshold_field`: act_eps for act/pondernet, converge_tol for converge; nothing to sweep for
a rule without one). Also the accuracy per label at each forced depth.
"""
from __future__ import annotations

from reference.halting import get_rule

from ..probe import collect, with_halting, with_loops
from ..stats import markdown_table
from .load import setup, summarize
from .output import header, out_name, write_outputs
from .plotting import pyplot

DEFAULT_THRESHOLDS = {"act_eps": "0.5,0.3,0.2,0.1,0.05,0.02,0.01,0.003,0.001",
                      "converge_tol": "0.3,0.2,0.1,0.05,0.02,0.01,0.005"}  # threshold field -> values swept


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


def threshold_sweep(cfg, thresholds: str | None) -> tuple[str | None, list[float]]:
    """(the LoopConfig field holding the rule's halting threshold, the values to try): `thresholds` (a comma list)
    or the field's defaults; (None, []) for a rule without a threshold."""
    knob = get_rule(cfg.halt).threshold_field
    if knob is None:
        return None, []
    return knob, [float(v) for v in (thresholds or DEFAULT_THRESHOLDS.get(knob, "")).split(",") if v.strip()]


def extrapolate(run_dir, loops: str = "1..3K", thresholds: str | None = None, windows: int = 128, split: str = "val",
                data: str | None = None, batch_size: int = 32, progress: bool = True) -> dict:
    """Loss and accuracy at forced test-time depths (fixed halting, output = the k-th state) including depths
    beyond the training max K, then the trained halting rule with max_loops = max(loops) at other thresholds
    (act_eps for act/pondernet, converge_tol for converge; none for fixed). Per label accuracy at each depth."""
    from tqdm import tqdm
    run, ev = setup(run_dir, data, split, windows)
    cfg, K = run.cfg, run.cfg.max_loops
    ks = parse_loops(loops, K)
    knob, values = threshold_sweep(cfg, thresholds)
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
    fig = _figure(rows, ev, cfg, knob, K, Lmax)
    paths = write_outputs(run_dir, out_name("extrapolate", data, split), {"": rows, "by_label": by_label}, md, fig)
    return dict(rows=rows, by_label=by_label, md=md, paths=paths)


def _figure(rows, ev, cfg, knob, K, Lmax):
    """Left: loss and accuracy against the forced depth; right: loss against mean depth along the threshold sweep."""
    plt = pyplot()
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
    return fig
