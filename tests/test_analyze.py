"""gpu.analyze, gpu.probe, gpu.stats, gpu.diagnostics and gpu.experiments on tiny runs trained here (a few steps
each): every command writes its CSV, Markdown and PNG, its numbers agree with a direct computation, and bad input gets a
clear error. Nothing here asserts a research result (the runs are far too short to have one)."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from gpu import analyze, diagnostics, experiments, probe, stats, tasks
from gpu.config import TrainConfig
from gpu.train import run as train_run
from reference import get_preset

SMALL = dict(d_model=32, n_head=2, block_size=32)


def train(out, data="bundled", steps=4, **model):
    tc = TrainConfig(out=str(out), data=data, max_steps=steps, batch_size=4, eval_batches=1, eval_every=steps,
                     ckpt_every=steps, log_every=1, progress=False)
    train_run(tc, get_preset("tiny", **{**SMALL, **model}))
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data = str(root / "addition")
    tasks.write_task("addition", data, n_train=400, n_val=60, seed=1, min_size=1, max_size=3)
    return dict(
        data=data,
        addition=train(root / "addition-run", data=data, max_loops=3),
        bundled=train(root / "bundled-run", halt_bias_init=-1.0),            # ACT tokens spread over depths
        layer=train(root / "layer-run", n_layer=2, loop_scope="layer", max_loops=2),
        fixed=train(root / "fixed-run", halt="fixed", max_loops=2),
    )


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_outputs(run_dir, name, tables=("",)):
    out = os.path.join(run_dir, "analysis")
    for suffix in tables:
        assert read_csv(os.path.join(out, f"{name}{'_' + suffix if suffix else ''}.csv"))
    assert open(os.path.join(out, f"{name}.md")).read().startswith("# ")
    assert open(os.path.join(out, f"{name}.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


# ----------------------------------------------------------------------------- probe
def test_load_run_errors(tmp_path, runs):
    with pytest.raises(ValueError, match="does not exist"):
        probe.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        probe.load_run(tmp_path / "empty")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.json").write_text(open(os.path.join(runs["bundled"], "config.json")).read())
    with pytest.raises(ValueError, match="no checkpoint yet"):
        probe.load_run(tmp_path / "started")
    with pytest.raises(ValueError, match="data folder"):
        probe.load_run(runs["bundled"], data=str(tmp_path / "moved"))
    assert analyze.main(["calibration", str(tmp_path / "nope"), "--no-progress"]) == 2


def test_windows_of_a_task_folder_start_at_problems(runs):
    ev = probe.eval_windows(runs["data"], "val", 16, 32)
    assert ev.x.shape == (16, 32) and np.array_equal(ev.x[:, 1:], ev.y[:, :-1])
    eot = ev.eot_id
    tokens = np.fromfile(os.path.join(runs["data"], "val.bin"), np.uint16)
    starts = [np.flatnonzero((np.lib.stride_tricks.sliding_window_view(tokens, 32) == ev.x[i]).all(1))[0]
              for i in range(len(ev.x))]
    assert all(s == 0 or tokens[s - 1] == eot for s in starts)
    # answer mask = targets with a carry label; problem ids count the end tokens before a target
    label_names = [ev.names[i] for i in ev.label[ev.answer]]
    assert all(n.startswith("carry") for n in label_names)
    pid = ev.problem_ids()
    assert (pid[:, 0] == 0).all() and (np.diff(pid, axis=1) >= 0).all()


def test_forced_depth_runs_exactly_k_steps(runs):
    r = probe.load_run(runs["bundled"])
    ev = probe.eval_windows(r.data_dir, "val", 3, 16)
    for k in (1, 2, 7):
        out = probe.collect(r.params, probe.with_loops(r.cfg, k), ev.x, ev.y)
        assert (out["n_steps"] == k).all() and out["deltas"].shape == (3, 16, 1, k)
    out = probe.collect(r.params, r.cfg, ev.x, ev.y)
    assert np.allclose(out["weights"].sum(-1), 1, atol=1e-5) and out["loss"].shape == (3, 16)


# ----------------------------------------------------------------------------- diagnostics
def test_running_mean_per_step_counts_only_running_tokens():
    # token a halts after step 1: its entries at steps 2 and 3 (100) must not enter those steps' means
    values = np.array([[1.0, 100.0, 100.0], [3.0, 4.0, 6.0], [5.0, 2.0, 100.0]])
    n_steps = np.array([1, 3, 2])
    assert diagnostics.running_mean_per_step(values, n_steps, 3).tolist() == [3.0, 3.0, 6.0]
    assert diagnostics.running_tokens_per_step(n_steps, 3).tolist() == [3, 2, 1]
    # a step no token reaches is nan; leading axes (B, T, G) all count as tokens; torch input works
    m = diagnostics.running_mean_per_step(torch.tensor(values[None, :2, None]), torch.tensor([[[1], [1]]]))
    assert m[0] == 2.0 and np.isnan(m[1:]).all()
    cfg = get_preset("tiny", max_loops=3, min_loops=1)
    hs = diagnostics.halting_stats(dict(n_steps=n_steps[None, :, None], deltas=values[None, :, None]), cfg)
    assert hs["delta_per_step"] == [3.0, 3.0, 6.0] and hs["depth_hist"] == [1, 1, 1]
    with pytest.raises(ValueError, match="expected K = 4"):
        diagnostics.running_mean_per_step(values, n_steps, 4)


def test_collapse_needs_an_adaptive_rule():
    at_min = dict(share_min=1.0, share_max=0.0)
    assert diagnostics.collapsed(at_min, get_preset("tiny", max_loops=3)) == "min_loops=1"
    assert diagnostics.collapsed(at_min, get_preset("tiny", halt="fixed", max_loops=3)) is None


# ----------------------------------------------------------------------------- stats
def test_group_means_and_bootstrap():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 10))
    groups = rng.integers(0, 3, (40, 10))
    sums, counts = stats.group_sums(values, groups, 4)
    for g in range(3):
        assert np.isclose(sums[:, g].sum() / counts[:, g].sum(), values[groups == g].mean())
    assert counts[:, 3].sum() == 0
    boot = stats.bootstrap_means(sums, counts, 500, seed=1)
    assert boot.shape == (500, 4) and np.isnan(boot[:, 3]).all()
    diffs = stats.pairwise_differences(["a", "b", "c", "d"], sums, counts, 500)
    assert [(d["a"], d["b"]) for d in diffs] == [("a", "b"), ("a", "c"), ("b", "c")]  # empty group d left out
    for d in diffs:
        assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    # a shift far larger than the noise gives an interval that excludes zero
    shifted = values + 5 * (groups == 0)
    d = stats.pairwise_differences(["a", "b", "c"], *stats.group_sums(shifted, groups, 3), 500)[0]
    assert d["excludes_zero"] and 4 < d["diff"] < 6


def test_spearman_matches_ranks():
    x = np.array([1, 2, 3, 4, 5.0])
    assert stats.spearman(x, x ** 3)[0] == pytest.approx(1.0)
    assert stats.spearman(x, -x)[0] == pytest.approx(-1.0)
    assert np.isnan(stats.spearman(x, np.ones(5))[0])
    lo, hi = stats.bootstrap_spearman(np.arange(40.0), np.arange(40.0), np.arange(40) // 4, 50)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_exact_match_counts_only_complete_problems():
    y = np.array([[5, 6, 0, 7, 8, 0, 9, 9]])  # two complete problems, a third cut off
    meas = np.array([[255, 1, 255, 255, 2, 255, 3, 3]])
    ev = probe.Windows(x=y, y=y, label=None, names=[], measures={"m": meas}, eot_id=0,
                       task=dict(label_measure="m", na=255))
    correct = np.array([[True, True, True, True, False, True, True, True]])
    assert analyze.exact_match(correct, ev) == 0.5
    assert ev.complete().tolist() == [[True] * 6 + [False] * 2]


def test_parse_loops():
    assert analyze.parse_loops("1..3K", 4) == list(range(1, 13))
    assert analyze.parse_loops("1,2,K,2K", 3) == [1, 2, 3, 6]
    for bad in ("0..3", "a..b", ""):
        with pytest.raises(ValueError, match="--loops"):
            analyze.parse_loops(bad, 4)


# ----------------------------------------------------------------------------- the commands
def test_depth_by_topic(runs):
    res = analyze.depth_by_topic(runs["bundled"], windows=12, n_boot=100, progress=False)
    assert_outputs(runs["bundled"], "depth_by_topic", ("", "diffs"))
    r = probe.load_run(runs["bundled"])
    ev = probe.eval_windows(r.data_dir, "val", 12, r.cfg.block_size)
    depth = probe.collect(r.params, r.cfg, ev.x, ev.y)["depth"]
    topics = {x["name"]: x for x in res["rows"] if x["kind"] == "topic"}
    classes = [x for x in res["rows"] if x["kind"] == "class"]
    assert sum(x["tokens"] for x in topics.values()) == sum(x["tokens"] for x in classes) == depth.size
    for i, name in enumerate(ev.names):
        if name in topics:
            assert topics[name]["mean"] == pytest.approx(depth[ev.label == i].mean())
            shares = [topics[name][f"share_N{k}"] for k in range(1, r.cfg.max_loops + 1)]
            assert sum(shares) == pytest.approx(1.0)
    n = len(topics)
    assert len([d for d in res["diffs"] if d["kind"] == "topic"]) == n * (n - 1) // 2


def test_token_classes():
    class Tok:
        def decode(self, ids):
            return ["<eot>", " the", "ing", "42", "\n\n", ", ", "a1", "\ufffd"][ids[0]]
    ids, names = analyze.token_classes(Tok(), 9, eot_id=0)
    assert [names[i] for i in ids] == ["eot", "word-start", "word-piece", "number", "space", "punct", "other",
                                       "other", "other"]


def test_depth_map(runs, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("if a < b and c > 0:\n    return '$x & y'\n" * 3)
    res = analyze.depth_map(runs["bundled"], str(text), progress=False)
    assert_outputs(runs["bundled"], "depth_map")
    page = open(os.path.join(runs["bundled"], "analysis", "depth_map.html")).read()
    legend = probe.load_run(runs["bundled"]).cfg.max_loops  # one coloured span per depth in the legend
    assert page.count("<span style=\"background:#") == len(res["tokens"]) + legend
    assert "&lt;" in page and "halting weights" in page and "<b" not in page.split("<pre")[1].replace("<br>", "")
    assert "".join(res["tokens"]) == text.read_text()  # the map covers the whole text, in order
    assert len(res["depth"]) == len(res["tokens"]) > 32  # longer than one block: run in chunks
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no text"):
        analyze.depth_map(runs["bundled"], str(empty), progress=False)
    with pytest.raises(ValueError, match="not a file"):
        analyze.depth_map(runs["bundled"], str(tmp_path / "missing.txt"), progress=False)


@pytest.mark.parametrize("which", ["bundled", "layer"])
def test_convergence(runs, which):
    res = analyze.convergence(runs[which], windows=4, lipschitz_windows=1, lipschitz_iters=5, progress=False)
    assert_outputs(runs[which], "convergence", ("", "groups", "spectral", "summary"))
    cfg = probe.load_run(runs[which]).cfg
    assert len(res["rows"]) == 3 * cfg.max_loops and len(res["groups"]) == cfg.n_groups
    assert all(r["forced_mean"] >= 0 for r in res["rows"])
    assert all(g["lipschitz"] > 0 for g in res["groups"])
    assert res["summary"]["non_contractive"] == (res["summary"]["lipschitz_max"] >= 1
                                                 and not res["summary"]["tail_rate"] < 1)


def test_calibration(runs):
    res = analyze.calibration(runs["bundled"], windows=6, progress=False)
    assert_outputs(runs["bundled"], "calibration", ("", "by_depth"))
    r = res["rates"]
    assert r["under_thinking"] + r["calibrated"] + r["over_thinking"] == pytest.approx(1.0)
    assert sum(row["tokens"] for row in res["by_depth"]) == r["tokens"] == 6 * 32
    fixed = analyze.calibration(runs["fixed"], windows=4, progress=False)["rates"]
    assert fixed["under_thinking"] == 0  # a fixed-depth model always runs K >= k*


def test_extrapolate(runs):
    res = analyze.extrapolate(runs["addition"], loops="1..2K", windows=8, thresholds="0.3,0.01", progress=False)
    assert_outputs(runs["addition"], "extrapolate", ("", "by_label"))
    forced = [r for r in res["rows"] if r["mode"] == "forced"]
    assert [r["loops"] for r in forced] == list(range(1, 7))
    assert [r["beyond_training"] for r in forced] == [False] * 3 + [True] * 3
    assert all(0 <= r["exact_match"] <= 1 and 0 <= r["answer_acc"] <= 1 for r in forced)
    sweep = [r for r in res["rows"] if r["mode"] == "act act_eps"]
    assert [r["threshold"] for r in sweep] == [0.3, 0.01]
    # a fixed-depth run at its own depth is the trained model; no threshold to sweep
    res = analyze.extrapolate(runs["fixed"], loops="2", windows=4, progress=False)
    by = {r["mode"]: r for r in res["rows"]}
    assert set(by) == {"forced", "trained"} and by["forced"]["loss"] == pytest.approx(by["trained"]["loss"])


def test_difficulty(runs):
    res = analyze.difficulty(runs["addition"], windows=16, n_boot=20, progress=False)
    assert_outputs(runs["addition"], "difficulty", ("", "by_value"))
    assert {r["measure"] for r in res["rhos"]} == {"carry_chain", "lookback", "longest_carry_chain", "operand_length",
                                                  "significant"}
    r = probe.load_run(runs["addition"])
    ev = probe.eval_windows(r.data_dir, "val", 16, r.cfg.block_size)
    out = probe.collect(r.params, r.cfg, ev.x, ev.y)
    remainder = out["ponder"] - out["depth"]  # ACT with one group: ponder cost N + R, R in (0, 1]
    assert r.cfg.halt == "act" and (remainder > 0).all() and (remainder <= 1 + 1e-6).all()
    m = ev.measures["carry_chain"]
    assert [x["depth"] for x in res["rhos"] if x["measure"] == "carry_chain"] == ["N", "ponder"]
    for kind, key in (("N", "depth"), ("ponder", "ponder")):
        rho = next(x for x in res["rhos"] if x["measure"] == "carry_chain" and x["depth"] == kind)
        expect = stats.spearman(out[key][m != 255], m[m != 255])[0]
        assert (np.isnan(rho["rho_token"]) and np.isnan(expect)) or rho["rho_token"] == pytest.approx(expect)
        assert rho["tokens"] == int((m != 255).sum())
    with pytest.raises(ValueError, match="not a synthetic task"):
        analyze.difficulty(runs["bundled"], windows=4, progress=False)
    # --where keeps only the answer digits of the sum (no padding zeros): fewer tokens, its own output files
    sub = analyze.difficulty(runs["addition"], windows=16, n_boot=20, progress=False, where="significant=1")
    kept = (m != 255) & (ev.measures["significant"] == 1)
    row = next(x for x in sub["rhos"] if x["measure"] == "carry_chain" and x["depth"] == "N")
    assert row["tokens"] == int(kept.sum()) < int((m != 255).sum())
    expect = stats.spearman(out["depth"][kept], m[kept])[0]
    assert (np.isnan(row["rho_token"]) and np.isnan(expect)) or row["rho_token"] == pytest.approx(expect)
    assert os.path.isfile(os.path.join(runs["addition"], "analysis", "difficulty-significant1.md"))
    with pytest.raises(ValueError, match="expected MEASURE=VALUE with MEASURE one of"):
        analyze.difficulty(runs["addition"], windows=4, progress=False, where="carry=1")


def test_dense_loss(runs, tmp_path):
    looped_dir = train(tmp_path / "looped", halt_bias_init=0.0)  # measured: its tokens take 2 or 3 steps
    dense = train(tmp_path / "dense", n_prelude=0, n_layer=2, n_coda=0, max_loops=1, halt="fixed", loop_scope="layer",
                  input_injection="none")
    res = analyze.dense_loss(looped_dir, dense, windows=8, n_boot=20, progress=False)
    assert_outputs(looped_dir, "dense_loss", ("", "by_quintile"))
    looped, base = probe.load_run(looped_dir), probe.load_run(dense)
    ev = probe.eval_windows(looped.data_dir, "val", 8, looped.cfg.block_size)
    depth = probe.collect(looped.params, looped.cfg, ev.x, ev.y)["depth"]
    loss = probe.collect(base.params, base.cfg, ev.x, ev.y)["loss"]
    row = next(r for r in res["rhos"] if r["depth"] == "N")
    expect = stats.spearman(depth.ravel(), loss.ravel())[0]
    assert len(np.unique(depth)) > 1 and np.isfinite(expect)  # the depth varies: rho is defined
    assert row["tokens"] == depth.size and row["rho"] == pytest.approx(expect)
    assert sum(b["tokens"] for b in res["per_quintile"]) == depth.size
    assert [b["dense_loss_mean"] for b in res["per_quintile"]] == sorted(b["dense_loss_mean"]
                                                                         for b in res["per_quintile"])
    with pytest.raises(ValueError, match="same tokenizer"):
        analyze.dense_loss(looped_dir, runs["addition"], windows=2, progress=False)


def test_cli_writes_and_prints(runs, capsys):
    assert analyze.main(["extrapolate", runs["fixed"], "--loops", "1,2", "--windows", "2", "--no-progress"]) == 0
    assert "Test-time depth extrapolation" in capsys.readouterr().out


# ----------------------------------------------------------------------------- iso-flop
def test_iso_flop_budgets_and_outputs(tmp_path):
    cfgs = experiments.models(d_model=32, n_head=2, block_size=32, loops=3)
    assert cfgs["dense-1x"].n_layer == 3 and cfgs["dense-1x"].max_loops == 1
    assert cfgs["dense-Kx"].n_layer == 5  # 1 + 1 x 3 + 1 blocks of work per token
    res = experiments.iso_flop(str(tmp_path / "iso"), looped_steps=3, batch_size=2, eval_points=1, progress=False,
                               d_model=32, n_head=2, block_size=32, loops=3)
    rows = {r["model"]: r for r in res["rows"]}
    assert rows["dense-1x"]["steps"] > rows["looped"]["steps"] == 3
    budget = rows["looped"]["train_pflops"]
    for r in rows.values():  # each model gets the budget, to within one step
        assert abs(r["train_pflops"] - budget) <= r["train_pflops"] / r["steps"] / 2 + 1e-12
    s = res["summary"]
    gap = s["ce_dense_1x"] - s["ce_dense_Kx"]
    if gap > 0:
        assert s["gap_closed"] == pytest.approx((s["ce_dense_1x"] - s["ce_looped"]) / gap)
    else:
        assert np.isnan(s["gap_closed"])
    assert_outputs(str(tmp_path / "iso"), "iso_flop", ("", "summary"))
    again = experiments.iso_flop(str(tmp_path / "iso"), looped_steps=3, batch_size=2, eval_points=1, progress=False,
                                 d_model=32, n_head=2, block_size=32, loops=3)  # finished runs are reused
    assert json.dumps(again["summary"]) == json.dumps(s)  # (nan-safe comparison)
    with pytest.raises(ValueError, match="other settings"):
        experiments.iso_flop(str(tmp_path / "iso"), looped_steps=4, batch_size=2, eval_points=1, progress=False,
                             d_model=32, n_head=2, block_size=32, loops=3)
    assert json.load(open(tmp_path / "iso" / "looped" / "config.json"))["model"]["max_loops"] == 3
