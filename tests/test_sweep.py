"""`python -m gpu.experiments sweep` and `ablation` on tiny runs (d_model 16, a few steps): the grid, parallel cells,
resuming and restarting cells, the summary files, task metrics, failures and signals. Behaviour only: the runs are
far too short to say anything about looped models."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gpu import checkpoint as ckpt
from gpu import experiments, tasks
from gpu.experiments import CellFailed, apply_flags, cell_state, cells, load_spec, sweep
from gpu.experiments.grid import empty_spec
from gpu.train import run as train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(d_model=16, n_head=2, block_size=16, batch_size=2, max_steps=2, eval_batches=1, log_every=1)
TOML = """
seeds = [0, 1]
[base]
d_model = 16
max_steps = 3
[settings.plain]
[settings.warm]
min_loops_start = 3
min_loops_warmup = 2
[grid]
halt = ["act", "exit_gate"]
"""


def spec_of(settings=None, seeds=(0, 1), **base):
    return {**empty_spec(), "base": {**BASE, **base}, "settings": settings or {"act": {}}, "seeds": list(seeds)}


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_grid_file_expands_to_settings_x_product_x_seeds(tmp_path):
    (tmp_path / "s.toml").write_text(TOML)
    spec = apply_flags(load_spec(tmp_path / "s.toml"), base=["max_steps=5", "rope=false"], seeds="0,1,2")
    grid = cells(spec, str(tmp_path / "out"))
    assert len(grid) == 2 * 2 * 3
    assert [c.setting for c in grid[::3]] == ["plain,halt=act", "plain,halt=exit_gate", "warm,halt=act",
                                              "warm,halt=exit_gate"]
    c = grid[-1]
    assert (c.seed, c.tc.max_steps, c.tc.min_loops_start, c.mc.halt, c.mc.rope, c.tc.threads) == \
        (2, 5, 3, "exit_gate", False, 1)
    assert c.out == str(tmp_path / "out" / "runs" / "warm,halt=exit_gate" / "seed2")
    assert c.mc.vocab_size == 2048  # the data's tokenizer, as gpu.train sets it
    assert "--no-rope" in c.argv() and "--seed=2" in c.argv() and "--no-progress" in c.argv()
    flags = apply_flags(empty_spec(), base=["d-model=16"], settings=["x:halt=fixed,max_loops=2"], sets=["lr=0.1,0.2"])
    assert flags["settings"] == {"x": {"halt": "fixed", "max_loops": 2}} and flags["grid"] == {"lr": [0.1, 0.2]}


@pytest.mark.parametrize("toml,fragment", [
    ("seeds = [0, 0]", "distinct integers"),
    ("sed = [0]", "unknown key(s) ['sed']"),
    ("[base]\nd_modl = 16", "unknown field 'd_modl' (did you mean 'd_model'?)"),
    ("[grid]\nhalt = 'act'", "grid.halt='act': expected a non-empty list"),
    ("[settings.bad]\nn_head = 3", "sweep cell 'bad': LoopConfig.n_head=3 is invalid"),
    ("[settings.w]\nmin_loops_start = 2", "min_loops_warmup=0 is invalid"),
    ("[settings.f]\nhalt = 'fixed'\nmin_loops_start = 2\nmin_loops_warmup = 3", "min_loops changes nothing"),
    ("[base]\ndata = '/nonexistent'", "no manifest.json"),
    ("[base\n", "not valid TOML"),
])
def test_bad_grids_are_refused_before_anything_is_written(tmp_path, toml, fragment, capsys):
    (tmp_path / "s.toml").write_text(toml)
    code = experiments.main(["sweep", "--grid", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,fragment", [
    (["sweep", "--jobs=0"], "--jobs=0: expected an int >= 1"),
    (["sweep", "--set", "halt"], "--set 'halt': expected FIELD=VALUE"),
    (["sweep", "--base", "max_steps=ten"], "max_steps='ten': expected int"),
    (["sweep", "--seeds", "a"], "--seeds='a'"),
    (["ablation", "--bodies", "mlp,cnn"], "--bodies='mlp,cnn': expected a comma list of"),
    (["sweep", "--base", "resume=true"], "resume/overwrite are the sweep's business"),
])
def test_bad_options_get_one_line_errors(tmp_path, args, fragment, capsys):
    assert experiments.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1, err


def test_sweep_trains_cells_in_parallel_skips_finished_ones_and_continues_raised_ones(tmp_path):
    out, said = str(tmp_path / "sw"), []
    spec = spec_of({"act": {}, "deep": {"halt_bias_init": -3.0}})
    res = sweep(spec, out, jobs=2, windows=8, say=said.append)
    assert [(r["setting"], r["seed"]) for r in res["rows"]] == [("act", 0), ("act", 1), ("deep", 0), ("deep", 1)]
    for s in res["summary"]:  # mean and sample sd over the seeds of each setting
        vals = [r["val_ce"] for r in res["rows"] if r["setting"] == s["setting"]]
        assert s["seeds"] == 2 and s["val_ce_mean"] == pytest.approx(np.mean(vals))
        assert s["val_ce_sd"] == pytest.approx(np.std(vals, ddof=1))
    r = res["rows"][0]
    assert 1 <= r["mean_depth"] <= 4 and 0 < r["modal_share"] <= 1 and r["depth_entropy"] >= 0
    assert r["mflops_per_token"] > 0 and r["tokens_per_s"] > 0 and "answer_acc" not in r  # no task data
    files = sorted(os.listdir(os.path.join(out, "analysis")))
    assert files == ["sweep.csv", "sweep.md", "sweep.png", "sweep_by_label.csv", "sweep_summary.csv"]
    assert "+-" in res["md"] and json.load(open(os.path.join(out, "sweep.json")))["seeds"] == [0, 1]
    metrics = os.path.join(out, "runs", "act", "seed0", "metrics.jsonl")
    before, said[:] = digest(metrics), []
    sweep(spec, out, jobs=2, windows=8, say=said.append)
    assert said == [f"sweep: {c} seed {s}: finished, skipped" for c in ("act", "deep") for s in (0, 1)]
    assert digest(metrics) == before
    sweep(spec_of({"act": {}}, seeds=(0,), max_steps=3), out, windows=8, say=said.append)  # max_steps raised
    assert "sweep: act seed 0: partial, continuing" in " ".join(said)
    steps = [json.loads(line)["step"] for line in open(metrics) if '"train"' in line]
    assert steps == [1, 2, 3]  # resumed, nothing logged twice


def test_interrupted_and_damaged_cells_resume_or_restart_and_foreign_runs_are_refused(tmp_path):
    out = str(tmp_path / "sw")
    spec = spec_of({"a": {}, "b": {"halt": "fixed"}, "c": {"halt": "pondernet"}}, seeds=(0,))
    a, b, c = cells(spec, out)
    for cell in (a, b, c):  # each stopped after its checkpoint of step 1
        train_run(cell.tc.__class__(**{**cell.tc.to_dict(), "max_steps": 1}), cell.mc)
    os.rename(os.path.join(b.out, "checkpoints"), os.path.join(tmp_path, "gone"))  # killed before its first
    for path in ckpt.list_checkpoints(c.out):  # every checkpoint damaged
        with open(os.path.join(path, "model.safetensors"), "r+b") as f:
            f.seek(500)
            f.write(b"\xff" * 100)
    assert [cell_state(x) for x in (a, b, c)] == ["partial", "partial", "broken"]
    sweep(spec, out, windows=8, say=lambda m: None)
    assert [cell_state(x) for x in (a, b, c)] == ["done"] * 3
    assert "--overwrite: replaced the run" in open(os.path.join(out, "logs", "c-seed0.log")).read()
    other = spec_of({"a": {"lr": 0.1}}, seeds=(0,))
    with pytest.raises(ValueError, match="holds a run with other settings .lr: run has 0.003, the sweep 0.1"):
        sweep(other, out, windows=8)


def test_a_failing_cell_is_reported_and_the_others_are_summarized(tmp_path, capsys):
    out = str(tmp_path / "sw")
    spec = spec_of({"ok": {}, "bad": {"seq_len": 64}}, seeds=(0,))  # seq_len > block_size: refused at run time
    with pytest.raises(CellFailed, match=r"1 of 2 cells failed .*bad seed 0 exited 2: error: --seq-len=64 exceeds"):
        sweep(spec, out, windows=8, say=lambda m: None)
    rows = open(os.path.join(out, "analysis", "sweep.csv")).read().splitlines()
    assert len(rows) == 2 and rows[1].startswith("ok,0,")
    argv = ["sweep", "--out", out, "--seeds", "0", "--setting", "ok:", "--setting", "bad:seq_len=64",
            *(f"--base={k}={v}" for k, v in BASE.items()), "--windows=8"]
    assert experiments.main(argv) == 1 and "1 of 2 cells failed" in capsys.readouterr().err


def test_a_task_sweep_reports_answer_accuracy_and_rho_with_its_ci(tmp_path):
    data = str(tmp_path / "addition")
    tasks.write_task("addition", data, n_train=300, n_val=60, seed=1, min_size=1, max_size=3)
    res = sweep(spec_of(data=data, block_size=32, max_loops=3), str(tmp_path / "sw"), windows=8, n_boot=20,
                where="significant=1", say=lambda m: None)
    r = res["rows"][0]
    for key in ("answer_acc", "exact_match", "rho_N", "rho_N_low", "rho_N_high", "rho_ponder", "rho_ponder_low"):
        assert key in r
    assert 0 <= r["answer_acc"] <= 1 and "carry0" in {x["label"] for x in res["by_label"]}
    with pytest.raises(ValueError, match="--measure='hops': not a difficulty measure"):
        sweep(spec_of(data=data, block_size=32, max_loops=3), str(tmp_path / "sw"), windows=8, n_boot=20,
              measure="hops", say=lambda m: None)


def test_ablation_runs_body_x_halting_and_names_what_the_model_refuses(tmp_path):
    base = {**BASE, "n_layer": 2, "loop_scope": "layer", "max_loops": 2}
    res = experiments.ablation(str(tmp_path / "ab"), ["mlp", "linear"], ["act", "exit_gate"], base, [0],
                               windows=8, say=lambda m: None)
    assert [r["setting"] for r in res["rows"]] == ["mlp,act", "linear,act"]
    assert len(res["refused"]) == 2 and "exit_gate" in res["refused"][0] and "one loop group" in res["md"]
    r = res["rows"][1]
    assert {"depth_g0", "depth_g1", "mflops_per_token", "tokens_per_s"} <= set(r)
    assert r["mean_depth"] == pytest.approx((r["depth_g0"] + r["depth_g1"]) / 2)
    saved = json.load(open(tmp_path / "ab" / "runs" / "linear,act" / "seed0" / "config.json"))["model"]
    assert (saved["attention"], saved["halt"], saved["loop_scope"]) == ("linear", "act", "layer")
    assert os.path.isfile(tmp_path / "ab" / "analysis" / "ablation_summary.csv")


def test_the_summary_figure_adds_depth_and_loss_by_label_panels():
    from gpu.experiments.summary import figure
    rows = [dict(setting=s, seed=k, val_ce=4.0 + k, mean_depth=2.0, modal_share=0.9)
            for s in ("a", "b") for k in (0, 1)]
    by_label = [dict(setting=s, label=lab, mean_depth_mean=d, loss_mean=5.0 + d)
                for s, d in (("a", 1.0), ("b", 2.0)) for lab in ("math", "code")]
    plain, labelled = figure(rows, ["a", "b"], "t"), figure(rows, ["a", "b"], "t", by_label)
    assert len(labelled.axes) == len(plain.axes) + 2
    loss_panel = labelled.axes[len(plain.axes) + 1]
    assert "loss by label - a's" in loss_panel.get_title()
    assert [list(line.get_ydata()) for line in loss_panel.get_lines()] == [[0.0, 1.0], [0.0, 1.0]]  # minus a's loss


def test_sigterm_stops_the_cells_after_a_checkpoint_and_the_same_command_continues(tmp_path):
    out = str(tmp_path / "sw")
    argv = [sys.executable, "-m", "gpu.experiments", "sweep", "--out", out, "--seeds", "0", "--windows", "8",
            *(f"--base={k}={v}" for k, v in {**BASE, "max_steps": 400}.items())]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "runs", "base", "seed0", "metrics.jsonl")
    deadline = time.time() + 120
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    steps = [ckpt.step_of(p) for p in ckpt.list_checkpoints(os.path.dirname(metrics))]
    assert steps and steps[-1] < 400  # the cell saved the step it was in
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "partial, continuing" in again.stdout
    steps = [json.loads(line)["step"] for line in open(metrics) if '"train"' in line]
    assert steps == list(range(1, 401))


@pytest.mark.parametrize("grid", sorted(f for f in os.listdir(os.path.join(ROOT, "sweeps")) if f.endswith(".toml")))
def test_the_shipped_sweep_files_are_valid_grids(grid, tmp_path):
    """sweeps/*.toml (the grids behind docs/results.md) parse, and every cell's settings build their configs."""
    spec = load_spec(os.path.join(ROOT, "sweeps", grid))
    for i, fields in enumerate([spec["base"], *spec["settings"].values()]):
        data = fields.get("data")
        if data:  # a task folder the file's comments say how to make: here a small one of the same task
            task = next(t for t in tasks.TASKS if os.path.basename(data).startswith(t))
            fields["data"] = str(tmp_path / f"data{i}")
            tasks.write_task(task, fields["data"], n_train=20, n_val=10)
    made = cells(spec, str(tmp_path / "sweep"))
    assert len(made) == len(spec["seeds"]) * len(spec["settings"]) and all(c.tc.seed in spec["seeds"] for c in made)
