"""`python -m gpu.train`: the CLI, the run folder, exact resume, kill -9 safety, NaN stop, clear errors, DDP, the
optimizer's weight-decay groups and gradient accumulation."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import reference
from gpu import checkpoint as ckpt
from gpu.config import TrainConfig, parse_args
from gpu.model import from_reference
from gpu.train import TrainingDiverged, main, make_optimizer, run
from reference import get_preset
from reference.optim import AdamW, clip_grad_norm, decays, lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_MODEL = dict(d_model=32, n_head=2, block_size=32)
SMALL_ARGS = ["--d-model=32", "--n-head=2", "--block-size=32", "--batch-size=4", "--eval-batches=2", "--log-every=1",
              "--no-progress"]


def small_run(out, **train):
    tc = TrainConfig(out=str(out), batch_size=4, eval_batches=2, log_every=1, progress=False,
                     **{"max_steps": 6, "eval_every": 3, "ckpt_every": 3, **train})
    return tc, get_preset("tiny", **SMALL_MODEL)


def read_metrics(out, kind="train"):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


def cli(*args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "gpu.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_defaults_are_the_tiny_act_model_on_the_bundled_corpus():
    tc, mc, explicit = parse_args([])
    assert (tc.preset, tc.data, tc.device, mc.halt, explicit) == ("tiny", "bundled", "auto", "act", set())
    tc, mc, explicit = parse_args(["--preset", "looped-100m", "--max_loops=6", "--lr=1e-4", "--compile"])
    assert mc.max_loops == 6 and mc.d_model == 1024 and tc.lr == 1e-4 and tc.compile and explicit == {"max_loops"}


def test_help_lists_every_field_with_defaults():
    out = cli("--help")
    assert out.returncode == 0
    for field in ("--max-steps", "--grad-accum", "--resume", "--halt-penalty", "--loop-scope", "--step-scale-init"):
        assert field in out.stdout
    assert "(default: 800)" in out.stdout  # max_steps
    assert "peak learning rate of AdamW" in out.stdout and "checkpoints kept on disk" in out.stdout  # field comments
    assert "--compile, --no-compile" in out.stdout and "--progress, --no-progress" in out.stdout  # booleans are flags
    big = cli("--preset=looped-100m", "--help")
    assert big.returncode == 0 and "(default: 1024)" in big.stdout  # model fields default to the preset's values


def test_flags_take_dashes_or_underscores_and_booleans_are_flags():
    tc, mc, explicit = parse_args(["--max_steps=5", "--max-loops", "3", "--halt=fixed", "--no-progress", "--resume",
                                   "--no-rope", "--d_model=32"])
    assert (tc.max_steps, tc.progress, tc.resume, mc.max_loops, mc.halt, mc.rope, mc.d_model) == \
        (5, False, True, 3, "fixed", False, 32)
    assert explicit == {"max_loops", "halt", "rope", "d_model"}


@pytest.mark.parametrize("args,fragment", [
    (["--preset=huge"], "unknown preset 'huge'"),
    (["--n-layerz=3"], "unknown option"),
    (["--max-steps=ten"], "--max-steps='ten': expected int"),
    (["--halt=sometimes"], "halt='sometimes'"),
    (["--compile=maybe"], "--compile is a flag and takes no value"),
    (["--compile", "true"], "write --compile or --no-compile"),
    (["--n-head=3"], "--n-head=3 is invalid: expected a divisor of d_model=64"),
    (["--max-steps"], "--max-steps needs a value"),
])
def test_bad_arguments_get_clear_errors(args, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    err = capsys.readouterr().err
    assert fragment in err and exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1  # one line


@pytest.mark.parametrize("args,fragment", [
    (["--preset=huge"], "unknown preset 'huge'"),
    (["--max-steps=ten"], "expected int"),
    (["--data=/nonexistent"], "is not a folder"),
    (["--vocab-size=100"], "smaller than the tokenizer's vocabulary (2048)"),
    (["--data=."], "no manifest.json in '.'"),  # the data loader's FileNotFoundError
])
def test_bad_arguments_are_explained_on_the_command_line(args, fragment, tmp_path):
    out = cli(f"--out={tmp_path / 'run'}", "--max-steps=1", *SMALL_ARGS, *args)  # the tested flag comes last
    assert out.returncode == 2 and fragment in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")


def test_run_writes_the_run_folder(tmp_path):
    tc, mc = small_run(tmp_path / "run")
    final = run(tc, mc)
    files = set(os.listdir(tc.out))
    assert {"config.json", "metrics.jsonl", "report.md", "checkpoints"} <= files
    cfg = json.load(open(os.path.join(tc.out, "config.json")))
    assert cfg["model"]["vocab_size"] == 2048 and cfg["train"]["max_steps"] == 6
    train = read_metrics(tc.out)
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in train)
    evals = read_metrics(tc.out, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    topics = final["depth_by_topic"]
    assert set(topics) <= {"literature", "dialogue", "code", "technical", "math"} and len(topics) >= 3
    assert sum(t["count"] for t in topics.values()) == sum(final["depth_hist"]) == 2 * 4 * 32
    report = open(os.path.join(tc.out, "report.md")).read()
    assert "unigram baseline" in report and "Depth by topic" in report and "math" in report
    # the checkpoint loads as a model in either backend
    params, cfg2, opt_state, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tc.out))
    assert state["step"] == 6 and cfg2.d_model == 32 and "state" in opt_state
    assert len(ckpt.list_checkpoints(tc.out)) == 2  # keep_last


def test_resume_is_bit_identical(tmp_path):
    tc_full, mc = small_run(tmp_path / "full", max_steps=8, ckpt_every=4, eval_every=4)
    run(tc_full, mc)
    tc_half, _ = small_run(tmp_path / "half", max_steps=4, ckpt_every=4, eval_every=4)
    run(tc_half, mc)
    run(TrainConfig(**{**tc_half.to_dict(), "max_steps": 8, "resume": True}), mc)
    full, resumed = read_metrics(tc_full.out), read_metrics(tc_half.out)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bit-identical, not merely close


def test_resume_refuses_an_incompatible_config(tmp_path):
    tc, mc = small_run(tmp_path / "run", max_steps=3)
    run(tc, mc)
    with pytest.raises(ValueError, match="incompatible config: d_model: run has 32, now 48"):
        run(TrainConfig(**{**tc.to_dict(), "resume": True}), mc.replace(d_model=48))
    with pytest.raises(ValueError, match="lr: run has 0.003, now 0.1"):
        run(TrainConfig(**{**tc.to_dict(), "resume": True, "lr": 0.1}), mc)
    with pytest.raises(ValueError, match="already holds a run"):
        run(tc, mc)


def test_a_damaged_checkpoint_is_skipped_and_the_resume_stays_bit_identical(tmp_path, capsys):
    """200 flipped bytes in the newest checkpoint: its checksum fails, the resume falls back to the one before
    (saying so, keeping the damaged one aside) and recomputes the same losses; keep_last then never deletes it."""
    tc_full, mc = small_run(tmp_path / "full", max_steps=6, ckpt_every=2, eval_every=100, keep_last=3)
    run(tc_full, mc)
    tc, _ = small_run(tmp_path / "run", max_steps=4, ckpt_every=2, eval_every=100, keep_last=3)
    run(tc, mc)
    weights = os.path.join(ckpt.latest_checkpoint(tc.out), "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[1000:1200] = bytes(b ^ 0xFF for b in data[1000:1200])
    open(weights, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="does not match its sha256"):
        ckpt.load_checkpoint(os.path.dirname(weights))
    run(TrainConfig(**{**tc.to_dict(), "resume": True, "max_steps": 6, "keep_last": 1}), mc)
    assert "skipping a damaged checkpoint" in capsys.readouterr().err
    assert [r["loss"] for r in read_metrics(tc.out)] == [r["loss"] for r in read_metrics(tc_full.out)]
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(tc.out)] == ["step-0000006"]
    aside = [d for d in os.listdir(os.path.join(tc.out, "checkpoints")) if d.startswith("damaged-")]
    assert sorted(os.listdir(os.path.join(tc.out, "checkpoints", *aside))) == ["metrics.jsonl", "step-0000004"]


def test_keep_last_never_deletes_the_checkpoint_just_written(tmp_path):
    params, cfg = reference.init_params(get_preset("tiny", **SMALL_MODEL), 0, "float32"), get_preset("tiny", **SMALL_MODEL)
    for step in (5, 2):  # a newer step already on disk: keep_last=1 must still keep the verified step 2
        ckpt.save_checkpoint(tmp_path, step, params, cfg, {}, dict(rng={}), keep_last=1)
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(tmp_path)] == [2, 5]
    with pytest.raises(ValueError, match="refusing to write checkpoint step 7: the weights"):
        ckpt.save_checkpoint(tmp_path, 7, {**params, "embed.weight": params["embed.weight"] * np.nan}, cfg, {}, {}, 1)
    assert not os.path.exists(tmp_path / "checkpoints" / "step-0000007")


def test_logs_without_a_terminal_are_plain_lines(tmp_path):
    out = cli(f"--out={tmp_path / 'run'}", "--max-steps=4", "--eval-every=2", *SMALL_ARGS[:-2], "--log-every=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" |")[0] for line in lines if line.startswith("step ") and "/" in line.split()[1]] == \
        ["step 2/4", "step 4/4"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert any(line.startswith("step 2: val ce") for line in lines) and os.stat(tmp_path / "run" / "config.json").st_mode & 0o777 == 0o666 & ~umask


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import gpu.train.build as train_mod  # where the training code builds its model
    real = train_mod.from_reference

    def poisoned(params, cfg, **build):
        model = real(params, cfg, **build)
        forward, calls = model.forward, [0]

        def forward_with_nan(tokens, targets=None, **call):
            logits, loss, aux = forward(tokens, targets, **call)
            calls[0] += 1
            return logits, (loss * float("nan") if calls[0] == 5 else loss), aux  # the 5th training step

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(train_mod, "from_reference", poisoned)
    tc, mc = small_run(tmp_path / "run", max_steps=8, ckpt_every=2, eval_every=100)
    with pytest.raises(TrainingDiverged) as err:  # an exception, not SystemExit: a sweep calling run() goes on
        run(tc, mc)
    assert err.value.exit_code == 1
    msg = str(err.value)
    assert "loss became nan at step 4" in msg and "step-0000004" in msg
    assert os.path.basename(ckpt.latest_checkpoint(tc.out)) == "step-0000004"
    # the command line turns it into one line on stderr and exit status 1
    code = main([f"--out={tmp_path / 'cli'}", "--max-steps=8", "--ckpt-every=2", "--eval-every=100", *SMALL_ARGS])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: loss became nan at step 4") and "step-0000004" in err


def test_sigkill_leaves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [f"--out={out}", "--max-steps=400", "--ckpt-every=2", "--eval-every=1000", "--keep-last=2", *SMALL_ARGS]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "gpu.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(ckpt.list_checkpoints(out)) < 2:
            time.sleep(0.05)
        time.sleep(0.3)  # let it get into the middle of writing further checkpoints
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    last = ckpt.latest_checkpoint(out)
    assert last is not None, "no checkpoint was written before the kill"
    params, cfg, _, state = ckpt.load_checkpoint(last)
    step = state["step"]
    resumed = cli(*args[:1], f"--max-steps={step + 2}", "--ckpt-every=2", "--eval-every=1000", "--keep-last=2",
                  *SMALL_ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {step}" in resumed.stdout
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[3]["step"] == step + 2


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_torchrun_two_gloo_processes_match_one_process(tmp_path, wrapper):
    """2 processes x batch 2 and 1 process x batch 4 see the same global batches; in float64 the loss
    trajectories agree to 1e-10 (they differ only in the order the gradient sums are added up)."""
    common = ["--max-steps=4", "--eval-every=1000", "--ckpt-every=1000", "--dtype=float64", "--d-model=32",
              "--n-head=2", "--block-size=32", "--log-every=1", "--no-progress", "--device=cpu"]
    one = cli(f"--out={tmp_path / 'one'}", "--batch-size=4", *common)
    assert one.returncode == 0, one.stderr[-2000:]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "gpu.train", f"--out={tmp_path / 'two'}", "--batch-size=2", *common,
                          "--fsdp" if wrapper == "fsdp" else "--no-fsdp"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = [r["loss"] for r in read_metrics(tmp_path / "one")]
    b = [r["loss"] for r in read_metrics(tmp_path / "two")]
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(b, a, rtol=1e-10)


def test_sigterm_under_torchrun_stops_every_rank_after_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to both workers; they reduce the flag, so both finish the same step, rank 0 writes
    that step's checkpoint and says so once, and each worker exits 143 (torchrun itself then reports the signal)."""
    out, env = tmp_path / "run", dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [f"--out={out}", "--max-steps=100000", "--eval-every=100000", "--ckpt-every=100000", *SMALL_ARGS, "--device=cpu"]
    with open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "gpu.train", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 240
        while time.time() < deadline and len(read_metrics(out) if os.path.exists(out / "metrics.jsonl") else []) < 3:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        err.seek(0)
        stderr = err.read()
    step = read_metrics(out)[-1]["step"]
    assert stderr.count(f"stopped by SIGTERM after step {step} (all 2 processes): checkpoint") == 1, stderr[-3000:]
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(out)] == [step]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[3]["step"] == step


def test_collapsed_halting_is_flagged(tmp_path, capsys):
    """A halting bias of +20 makes every token stop at min_loops: after collapse_patience evals, a warning."""
    tc, mc = small_run(tmp_path / "run", max_steps=3, eval_every=1, collapse_patience=2)
    run(tc, mc.replace(halt_bias_init=20.0))
    err = capsys.readouterr().err
    assert "warning: halting has collapsed: >=95% of tokens stop at min_loops=1 for 2 evals in a row" in err
    tc, mc = small_run(tmp_path / "fixed", max_steps=3, eval_every=1, collapse_patience=2)
    run(tc, mc.replace(halt="fixed"))  # fixed depth is not a collapse
    assert "halting has collapsed" not in capsys.readouterr().err


def tiny_float64_model(**model):
    mc = get_preset("tiny", **SMALL_MODEL, **model)
    return mc, from_reference(reference.init_params(mc, 0, "float64"), mc).double()


def test_make_optimizer_decays_matrices_only():
    """The training code's own parameter groups: decay on the matrices, none on norm weights, step scales and the
    halting unit; and one AdamW step on a vector is exactly an Adam step without decay."""
    mc, model = tiny_float64_model()
    tc = TrainConfig(lr=0.01, weight_decay=0.5)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    name = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr"], no_decay["lr"]) == (0.5, 0.0, 0.01, 0.01)
    decayed = {name[id(p)] for p in decay["params"]}
    kept = {name[id(p)] for p in no_decay["params"]}
    assert decayed == {n for n, p in model.named_parameters() if decays(n, p)} and not decayed & kept
    assert kept == {n for n, p in model.named_parameters() if not decays(n, p)}
    for kind in ("norm", "step_scale", "halt"):
        assert any(kind in n for n in kept) and not any(kind in n for n in decayed), kind
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p, generator=torch.Generator().manual_seed(i))
             for i, (n, p) in enumerate(model.named_parameters())}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    for n, p in model.named_parameters():
        g = grads[n]
        adam = 0.01 * g / (g.abs() + 1e-8)  # the first Adam step: m_hat = g, sqrt(v_hat) = |g|
        want = before[n] * (1 - 0.01 * 0.5) - adam if n in decayed else before[n] - adam
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-15, msg=n)


def test_training_steps_match_the_reference_optimizer(tmp_path):
    """run() in float64 (its own optimizer, clipping and schedule) takes the steps reference.optim.AdamW takes on
    the reference's gradients of the same batches: same losses and weights to ~1e-9."""
    from gpu.data import BUNDLED_DIR, load_split, sample_batch
    tc, mc = small_run(tmp_path / "run", max_steps=4, eval_every=100, ckpt_every=100, dtype="float64", warmup=0,
                       weight_decay=0.5, grad_clip=0.5)
    run(tc, mc)
    mc = mc.replace(vocab_size=2048)
    params = {k: v.astype(np.float64) for k, v in reference.init_params(mc, tc.seed, "float32").items()}
    opt = AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8, weight_decay=tc.weight_decay)
    tokens, topics, _ = load_split(BUNDLED_DIR, "train")
    rng, losses = np.random.default_rng(tc.seed), []
    for step in range(tc.max_steps):
        x, y, _ = sample_batch(tokens, topics, tc.batch_size, mc.block_size, rng)
        loss, grads = reference.loss_and_grads(params, x, y, mc)
        clip_grad_norm(grads, tc.grad_clip)
        opt.step(grads, lr=lr_at(step, tc.lr, tc.warmup, tc.max_steps, tc.min_lr_ratio))
        losses.append(float(loss))
    np.testing.assert_allclose([r["loss"] for r in read_metrics(tc.out)], losses, rtol=1e-9)
    trained = ckpt.load_checkpoint(ckpt.latest_checkpoint(tc.out))[0]
    for k in params:
        np.testing.assert_allclose(trained[k], params[k], rtol=1e-8, atol=1e-12, err_msg=k)


def test_gradient_accumulation_averages_micro_batches(tmp_path):
    """grad_accum=2 x batch 2 sees the same data as one batch of 4 (the same rng draws) and, its micro-batch losses
    averaged, takes the same steps: same logged losses and weights (float64, up to summation order)."""
    common = dict(max_steps=4, eval_every=100, ckpt_every=100, dtype="float64", warmup=0)
    tc_one, mc = small_run(tmp_path / "one", **common)
    tc_acc, _ = small_run(tmp_path / "acc", **common, grad_accum=2)
    run(TrainConfig(**{**tc_one.to_dict(), "batch_size": 4}), mc)
    run(TrainConfig(**{**tc_acc.to_dict(), "batch_size": 2}), mc)
    one, acc = read_metrics(tc_one.out), read_metrics(tc_acc.out)
    np.testing.assert_allclose([r["loss"] for r in acc], [r["loss"] for r in one], rtol=1e-10)
    np.testing.assert_allclose([r["mean_depth"] for r in acc], [r["mean_depth"] for r in one], rtol=1e-12)
    w_one = ckpt.load_checkpoint(ckpt.latest_checkpoint(tc_one.out))[0]
    w_acc = ckpt.load_checkpoint(ckpt.latest_checkpoint(tc_acc.out))[0]
    for k in w_one:
        np.testing.assert_allclose(w_acc[k], w_one[k], rtol=1e-10, atol=1e-14, err_msg=k)


def test_bench_rejects_zero_steps(capsys):
    from gpu import bench
    assert bench.main(["train", "--steps", "0"]) == 2
    assert capsys.readouterr().err == "error: --steps=0: expected an int >= 1\n"


def test_init_from_a_retrofit_trains_from_its_weights(tmp_path, capsys):
    """`gpu.train --init-from` a retrofit folder: the architecture comes from the file, loop flags may change, the
    run's first weights are the file's (not the seeded init), and a flag that changes the architecture is named."""
    from gpu.convert import load_init
    from gpu.convert.__main__ import main as convert_main
    from reference.config import dense_variant
    from reference.weights import save_params
    dense = dense_variant(reference.LoopConfig(vocab_size=2048, block_size=16, d_model=16, n_head=2), 3)
    save_params(tmp_path / "dense.safetensors", reference.init_params(dense, 5), dense)
    retro = tmp_path / "retro"
    assert convert_main(["retrofit", str(tmp_path / "dense.safetensors"), str(retro), "--prelude", "1",
                         "--core", "1:2", "--coda", "1", "--max-loops", "2", "--halt", "act"]) == 0
    run = tmp_path / "run"
    args = ["--init-from", str(retro), "--out", str(run), "--max-steps", "1", "--batch-size", "2", "--eval-every", "1",
            "--eval-batches", "1", "--no-progress", "--max-loops", "3", "--lr", "1e-12", "--warmup", "0"]
    assert main(args) == 0
    assert f"adaloop: from {retro} halt=act" in capsys.readouterr().out  # the banner names the source, not a preset
    saved = json.loads((run / "config.json").read_text())["model"]
    assert saved["d_model"] == 16 and saved["max_loops"] == 3 and saved["halt"] == "act"
    params = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))[0]
    start = load_init(retro, reference.LoopConfig.from_dict(saved))
    for name in start:  # one step at lr 1e-12: still the file's weights, not a fresh random init
        np.testing.assert_allclose(params[name], start[name], atol=1e-6, err_msg=name)
    assert main(args[:3] + [str(tmp_path / "run2"), "--d-model", "32", "--no-progress"]) == 2
