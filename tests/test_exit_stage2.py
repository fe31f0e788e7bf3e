"""Stage II of the exit gate (reference/exit_stage2.py, gpu/exit_stage2.py, gpu.train --exit-stage2): the loss by hand
(which gate goes with which step's improvement), its hand-written gradient against finite differences, the torch twin
against the reference, and training: only the gate changes, the loss is finite, checkpoints resume exactly."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import reference as R
from equivalence_helpers import (TOLERANCES, assert_close, aux_margin, backend_params, configs, perturbed_params,
                                 random_batch, to_numpy, torch_device)
from gpu import checkpoint as ckpt
from gpu.config import TrainConfig, parse_args
from gpu.model import from_reference
from gpu.train import run
from gpu.train.build import check_exit_stage2
from gradcheck import assert_grad_close
from reference.exit_stage2 import (exit_stage2_backward, exit_stage2_forward, exit_stage2_loss_and_grads,
                                   gate_param_names)
from test_train import read_metrics, small_run

GATE = ["loop.0.halt.weight", "loop.0.halt.bias"]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def tiny_cfg(**kw):
    return R.LoopConfig(**{**dict(vocab_size=11, block_size=8, d_model=8, n_head=2, max_loops=4, halt="exit_gate",
                                  init_std=0.3), **kw})


# ----------------------------------------------------------------------------- the loss itself
def test_each_gate_is_labelled_by_the_improvement_of_the_next_step():
    """K = 4, min_loops = 2: the decisions are after steps 2 and 3, lambda_2 labelled by I_3 and lambda_3 by I_4,
    lambda_1 (no exit before min_loops) and lambda_4 (nothing after K) unused; the ignored target is left out."""
    z = np.array([[[0.3, -1.0, 2.0, 5.0], [1.0, 1.0, 1.0, 1.0]]])  # (1, 2, 4) gate logits after steps 1..4
    nll = np.array([[[3.0, 2.0, 1.5, 1.498], [9.0, 9.0, 9.0, 9.0]]])  # L_1..L_4 per token
    valid = np.array([[True, False]])
    k, gamma = 50.0, 0.005
    loss, cache = exit_stage2_forward(z, nll, valid, 2, k, gamma)
    want = 0.0
    for gate, gain in ((-1.0, 0.5), (2.0, 0.002)):  # (z of lambda_{n-1}, I_n) for n = 3, 4
        w, lam = sigmoid(k * (gain - gamma)), sigmoid(gate)
        want += -(w * np.log(1 - lam) + (1 - w) * np.log(lam))
    assert loss == pytest.approx(want / 2, rel=1e-12)  # mean over 1 valid token x 2 decisions
    dz = exit_stage2_backward(1.0, cache)
    assert np.all(dz[:, :, [0, 3]] == 0) and np.all(dz[:, 1] == 0)
    w3 = sigmoid(k * (0.5 - gamma))
    assert dz[0, 0, 1] == pytest.approx((sigmoid(-1.0) - (1 - w3)) / 2, rel=1e-12)


def test_the_loss_is_finite_for_a_saturated_gate_and_its_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (2, 5, 4))
    z[0, 0, 1] = 800.0  # sigmoid(z) is 1.0 in float64: the BCE on the logit stays finite
    nll = rng.uniform(0, 3, (2, 5, 4))
    valid = rng.random((2, 5)) < 0.8
    valid[0, 0] = True
    loss, cache = exit_stage2_forward(z, nll, valid, 1, 5.0, 0.1)
    assert np.isfinite(loss)
    z[0, 0, 1] = 0.5
    loss, cache = exit_stage2_forward(z, nll, valid, 1, 5.0, 0.1)
    assert_grad_close(lambda: exit_stage2_forward(z, nll, valid, 1, 5.0, 0.1)[0], z, exit_stage2_backward(1.0, cache),
                      rng, n_dirs=3, label="dz")


def test_gate_gradient_matches_finite_differences():
    """float64: d L_II / d (w, b) of the gate, through the states' frozen logits z_n = w . norm(s_n) + b; the
    returned grads hold the gate's parameters only."""
    cfg = tiny_cfg(min_loops=2, exit_stage2_k=5.0, exit_stage2_gamma=0.05)
    params = perturbed_params(cfg, 3)
    tokens, targets = random_batch(cfg, 3, 2, 6)
    loss, grads = exit_stage2_loss_and_grads(params, tokens, targets, cfg)
    assert sorted(grads) == sorted(GATE) == sorted(gate_param_names(cfg)) and np.isfinite(loss)
    rng = np.random.default_rng(1)
    for name in GATE:
        assert_grad_close(lambda: exit_stage2_loss_and_grads(params, tokens, targets, cfg)[0], params[name],
                          grads[name], rng, label=name)


def test_stage2_runs_every_step_whatever_the_exit_threshold():
    """L_n is the loss of the real step n: the pass runs all K steps, so the model's q does not change L_II."""
    cfg = tiny_cfg(halt_bias_init=2.0)  # an eager gate: at q = 0.5 tokens exit early in inference
    params = perturbed_params(cfg, 0)
    tokens, targets = random_batch(cfg, 0, 2, 8)
    assert R.forward(params, tokens, cfg)[1]["n_steps"].min() < cfg.max_loops
    a = exit_stage2_loss_and_grads(params, tokens, targets, cfg)
    b = exit_stage2_loss_and_grads(params, tokens, targets, cfg.replace(exit_threshold=1.0))
    assert a[0] == b[0] and all(np.array_equal(a[1][n], b[1][n]) for n in GATE)


@pytest.mark.parametrize("kw,fragment", [
    (dict(halt="act"), "use halt='exit_gate'"),
    (dict(max_loops=2, min_loops=2), "max_loops=2 <= min_loops=2"),
])
def test_stage2_refuses_a_model_without_a_gate_decision(kw, fragment):
    cfg = tiny_cfg(**kw)
    tokens, targets = random_batch(cfg, 0, 1, 4)
    with pytest.raises(ValueError, match=fragment):
        exit_stage2_loss_and_grads(R.init_params(cfg, 0, "float64"), tokens, targets, cfg)


@pytest.mark.parametrize("kw,fragment", [
    (dict(exit_stage2_k=0.0), "exit_stage2_k=0.0 is invalid: expected a number > 0"),
    (dict(exit_stage2_gamma=-0.1), "exit_stage2_gamma=-0.1 is invalid: expected a number >= 0"),
])
def test_stage2_constants_are_validated(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_cfg(**kw)


# ----------------------------------------------------------------------------- torch twin
@pytest.mark.parametrize("backend,dtype", backend_params(("torch-cpu", "torch-cuda"), dtypes=("float64",)))
@settings(max_examples=15)
@given(data=st.data())
def test_exit_stage2_equivalence(backend, dtype, data):
    """forward(..., exit_stage2=True): the loss and the gate's gradients equal the reference's (float64); no other
    parameter gets a gradient. Drawn over every knob, the model's q, k and gamma."""
    cfg = data.draw(configs(halt="exit_gate", exit_threshold=data.draw(st.sampled_from([0.3, 0.5, 1.0])),
                            exit_stage2_k=data.draw(st.sampled_from([50.0, 2.0])),
                            exit_stage2_gamma=data.draw(st.sampled_from([0.005, 0.2]))))
    assume(cfg.max_loops > cfg.min_loops)
    seed, B, T = data.draw(st.integers(0, 2 ** 20)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 8))
    params = perturbed_params(cfg, seed)
    tokens, targets = random_batch(cfg, seed, B, T)
    assume(aux_margin(R.forward(params, tokens, cfg.replace(exit_threshold=1.0))[1]) > TOLERANCES[dtype]["flip_margin"])
    loss, grads = exit_stage2_loss_and_grads(params, tokens, targets, cfg)
    device = torch_device(backend)
    model = from_reference(params, cfg, device=device, dtype=torch.float64)
    _, t_loss, _ = model(torch.from_numpy(tokens).to(device), torch.from_numpy(targets).to(device), exit_stage2=True)
    t_loss.backward()
    assert_close(float(t_loss.detach()), loss, dtype, "L_II")
    scale = max(1.0, *(np.abs(g).max() for g in grads.values()))
    got = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in got.items() if n not in GATE)
    for name in GATE:
        assert_close(to_numpy(got[name]), grads[name], dtype, f"d L_II / d {name}", scale=scale, grad=True)


# ----------------------------------------------------------------------------- training
def stage2_run(out, stage1, **train):
    tc, _ = small_run(out, **{"max_steps": 4, "eval_every": 100, "ckpt_every": 2, "exit_stage2": True,
                              "init_from": str(stage1), **train})
    return tc


def saved_model(out):
    return R.LoopConfig.from_dict(json.load(open(os.path.join(out, "config.json")))["model"])


def test_stage2_trains_only_the_gate_and_resumes_exactly(tmp_path, capsys):
    """A Stage I run (halt=exit_gate), then --exit-stage2 --init-from it: every tensor but the gate's is bit-identical
    to Stage I's, the gate moved, the loss is finite, the optimizer holds the gate alone, and a Stage II run
    resumed from its checkpoint recomputes the same losses and weights bit for bit."""
    tc1, mc = small_run(tmp_path / "stage1", max_steps=2, eval_every=100, ckpt_every=2)
    run(tc1, mc.replace(halt="exit_gate"))
    stage1 = ckpt.load_checkpoint(ckpt.latest_checkpoint(tc1.out))[0]
    full = stage2_run(tmp_path / "full", tc1.out)
    run(full, mc)  # from Python with no model field given: the architecture and halting are the file's
    assert "exit gate Stage II" in capsys.readouterr().out
    params, cfg, opt_state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(full.out))
    assert cfg.halt == "exit_gate" and len(opt_state["state"]) == 2
    changed = sorted(n for n in stage1 if not np.array_equal(stage1[n], params[n]))
    assert changed == sorted(GATE), changed
    losses = [r["loss"] for r in read_metrics(full.out)]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    half = stage2_run(tmp_path / "half", tc1.out, max_steps=2)
    run(half, mc)
    run(TrainConfig(**{**half.to_dict(), "max_steps": 4, "resume": True}), saved_model(half.out))
    assert [r["loss"] for r in read_metrics(half.out)] == losses
    resumed = ckpt.load_checkpoint(ckpt.latest_checkpoint(half.out))[0]
    assert all(np.array_equal(resumed[n], params[n]) for n in params)


def test_stage2_flags_get_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--exit-stage2", "--halt=exit_gate"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "--exit-stage2=True is invalid: expected --init-from" in err
    # checked against the model config before the run folder is prepared (gpu/train/runner.py)
    tc = TrainConfig(out=str(tmp_path / "x"), exit_stage2=True, init_from="somewhere")
    cases = [(tc, tiny_cfg(halt="act"), "--exit-stage2: .*halt='act'"),
             (tc, tiny_cfg(max_loops=3, min_loops=3), "--exit-stage2: .*max_loops=3 <= min_loops=3"),
             (TrainConfig(**{**tc.to_dict(), "random_loops": True}), tiny_cfg(), "--random-loops with --exit-stage2")]
    for tc_, mc, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            check_exit_stage2(tc_, mc)
