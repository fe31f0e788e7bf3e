"""Halting thresholds at exact ties (issue 10, "test gaps"): which side of the threshold a tie falls on.

The rules' definitions (reference/halting.py):
  ACT        halts at the first n >= min_loops with  sum_{j<=n} h_j >= 1 - eps     (a tie halts)
  PonderNet  halts at the first n >= min_loops with  S_n = prod_{j<=n} (1 - l_j) <= eps  (a tie halts)
  converge   halts at the first n >= min_loops with  delta_n < tol                  (a tie does NOT halt)
Every tie below is exactly representable (0.25 + 0.25 = 0.5 = 1 - 0.5; 0.5 * 0.5 = 0.25), so a `>` for `>=`
(or `<=` for `<`) moves N by one step. Checked in the rule functions of both backends (numpy; torch float32 and
float64) and in the whole model's online decision, where the tie is built exactly:
  - ACT / PonderNet: the halting unit's weight is zeroed, so every token's signal is sigmoid(bias); sigmoid(-log 3)
    rounds to exactly 0.25 and sigmoid(0) is exactly 0.5 (asserted, in each dtype);
  - converge: one token (B = T = 1, so no other token's halting changes its states), tol set to its own delta_2
    read from a fixed-depth run of the same weights.
The online decision only decides which tokens run the next step (the resolve recomputes N from the signals), so the
model tests also check that a halted token's state is frozen: its delta is exactly 0 after N and nonzero before.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference as R
from gpu import halting as GH
from gpu.model import from_reference
from reference import halting as RH

TORCH_DTYPES = [torch.float32, torch.float64]


# ----------------------------------------------------------------------------- the rule functions
def _rules(backend, dtype):
    """(act, pondernet, converge, to_array, to_numpy) for one backend."""
    if backend == "numpy":
        return RH.act, RH.pondernet, RH.converge, lambda x: np.asarray(x, dtype=np.float64), np.asarray
    t = dict(float32=torch.float32, float64=torch.float64)[dtype]
    return GH.act, GH.pondernet, GH.converge, lambda x: torch.tensor(x, dtype=t), lambda x: x.detach().numpy()


BACKENDS = [("numpy", "float64"), ("torch", "float32"), ("torch", "float64")]


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_equivalence_act_halts_at_an_exact_tie(backend, dtype):
    act, _, _, arr, npy = _rules(backend, dtype)
    h = arr([[0.25, 0.25, 0.25, 0.25],    # cum = 0.25, 0.5 = 1 - eps at step 2: halts there
             [0.25, 0.125, 0.25, 0.25],   # cum = 0.25, 0.375, 0.625: crosses strictly at step 3
             [0.5, 0.0, 0.25, 0.25]])     # the tie at step 1
    res = act(h, 0.5)
    np.testing.assert_array_equal(npy(res.n_steps), [2, 3, 1])
    np.testing.assert_array_equal(npy(res.remainder), [0.75, 0.625, 1.0])  # R = 1 - sum_{j<N} h_j
    np.testing.assert_array_equal(npy(res.weights), [[0.25, 0.75, 0, 0], [0.25, 0.125, 0.625, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(npy(res.ponder_cost), [2.75, 3.625, 2.0])
    assert npy(res.margin)[0] == 0.0 and npy(res.margin)[2] == 0.0  # a tie is at distance 0 from the threshold


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_equivalence_act_tie_after_min_loops(backend, dtype):
    """Signals before min_loops count as 0: with min_loops = 2 the tie moves to step 3."""
    act, _, _, arr, npy = _rules(backend, dtype)
    res = act(arr([[0.25, 0.25, 0.25, 0.25]]), 0.5, min_loops=2)
    np.testing.assert_array_equal(npy(res.n_steps), [3])
    np.testing.assert_array_equal(npy(res.weights), [[0.0, 0.25, 0.75, 0.0]])


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_equivalence_pondernet_halts_at_an_exact_tie(backend, dtype):
    _, pondernet, _, arr, npy = _rules(backend, dtype)
    lam = arr([[0.5, 0.5, 0.5, 0.5],      # S = 0.5, 0.25 = eps at step 2: halts there
               [0.5, 0.25, 0.5, 0.5],     # S = 0.5, 0.375, 0.1875: below eps at step 3
               [0.75, 0.5, 0.5, 0.5]])    # S = 0.25 = eps at step 1
    res = pondernet(lam, 0.25)
    np.testing.assert_array_equal(npy(res.n_steps), [2, 3, 1])
    assert npy(res.margin)[0] == 0.0 and npy(res.margin)[2] == 0.0
    res = pondernet(arr([[0.5, 0.5, 0.5, 0.5]]), 0.25, min_loops=2)  # lambda_1 ignored: S = 1, 0.5, 0.25
    np.testing.assert_array_equal(npy(res.n_steps), [3])


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_equivalence_converge_does_not_halt_at_an_exact_tie(backend, dtype):
    _, _, converge, arr, npy = _rules(backend, dtype)
    d = arr([[0.5, 0.25, 0.125, 0.5],     # delta_2 == tol: no halt; delta_3 < tol: halts at 3
             [0.25, 0.25, 0.25, 0.25],    # never strictly below: the last step
             [0.5, 0.25, 0.25, 0.0],      # ties at 2 and 3, below at 4
             [0.125, 0.25, 0.5, 0.5]])    # strictly below at step 1
    res = converge(d, 0.25)
    np.testing.assert_array_equal(npy(res.n_steps), [3, 4, 4, 1])
    np.testing.assert_array_equal(npy(res.weights)[0], [0, 0, 1, 0])
    res = converge(arr([[0.125, 0.25, 0.125, 0.5]]), 0.25, min_loops=2)  # step 1 may not halt, the tie at 2 does not
    np.testing.assert_array_equal(npy(res.n_steps), [3])


# ----------------------------------------------------------------------------- the whole model's online decision
def _tie_config(halt, **overrides):
    base = dict(vocab_size=13, block_size=8, d_model=8, n_head=2, n_prelude=1, n_layer=2, n_coda=1, max_loops=4,
                init_std=0.3, halt=halt)
    base.update(overrides)
    return R.LoopConfig(**base)


def _constant_signal_params(cfg, seed=0):
    """init_params with every halting unit's weight zeroed: the signal is sigmoid(bias) for every token."""
    params = R.init_params(cfg, seed, "float64")
    for g in range(cfg.n_groups):
        params[f"loop.{g}.halt.weight"] = np.zeros_like(params[f"loop.{g}.halt.weight"])
    return params


def _tokens(cfg, B=2, T=7, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T))


def _run(backend, params, cfg, tokens):
    """aux of one forward pass as numpy arrays (torch: float32 or float64 weights, as given)."""
    if backend == "numpy":
        return R.forward(params, tokens, cfg)[1]
    dtype = dict(float32=torch.float32, float64=torch.float64)[backend]
    model = from_reference(params, cfg, dtype=dtype)
    with torch.no_grad():
        _, _, aux = model(torch.from_numpy(tokens))
    return {k: v.numpy() for k, v in aux.items()}


MODEL_BACKENDS = ["numpy", "float32", "float64"]  # float32/float64: the torch model


def _assert_runs_exactly(aux, n_expected):
    """n_steps == n_expected everywhere; a token's state changes at steps <= N and is frozen (delta == 0) after."""
    np.testing.assert_array_equal(aux["n_steps"], n_expected)
    K = aux["deltas"].shape[-1]
    steps = np.arange(1, K + 1)
    ran = steps <= aux["n_steps"][..., None]
    assert np.all(aux["deltas"][ran] > 0), "a running token's state did not change"
    assert np.all(aux["deltas"][~ran] == 0), (
        "a token's state changed after it halted: the online decision let it run past N")


@pytest.mark.parametrize("scope", ["stack", "layer"])
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_equivalence_model_act_halts_at_an_exact_tie(backend, scope):
    """act_eps = 0.5, h = sigmoid(-log 3) = 0.25 exactly: cum = 0.25, 0.5 = 1 - eps, so every token halts at N = 2
    (N = 3 with min_loops = 2), and no token runs step N + 1."""
    cfg = _tie_config("act", act_eps=0.5, halt_bias_init=-math.log(3.0), loop_scope=scope)
    params = _constant_signal_params(cfg)
    tokens = _tokens(cfg)
    aux = _run(backend, params, cfg, tokens)
    assert np.all(aux["halt_probs"] == 0.25), "the tie is not exact: sigmoid(-log 3) did not round to 0.25"
    _assert_runs_exactly(aux, 2)
    cfg2 = cfg.replace(min_loops=2)
    aux = _run(backend, params, cfg2, tokens)
    assert np.all(aux["halt_probs"][..., 1:] == 0.25) and np.all(aux["halt_probs"][..., 0] == 0)
    _assert_runs_exactly(aux, 3)


@pytest.mark.parametrize("scope", ["stack", "layer"])
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_equivalence_model_pondernet_halts_at_an_exact_tie(backend, scope):
    """act_eps = 0.25, lambda = sigmoid(0) = 0.5: survival = 0.5, 0.25 = eps, so every token halts at N = 2."""
    cfg = _tie_config("pondernet", act_eps=0.25, halt_bias_init=0.0, loop_scope=scope)
    params = _constant_signal_params(cfg)
    aux = _run(backend, params, cfg, _tokens(cfg))
    assert np.all(aux["halt_probs"] == 0.5)
    _assert_runs_exactly(aux, 2)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_equivalence_model_converge_does_not_halt_at_an_exact_tie(backend):
    """One token; tol = its own delta_2 (from a fixed-depth run: the states agree while the token runs).
    delta_2 == tol must not halt, so the token runs on to the first step strictly below tol."""
    cfg = _tie_config("converge", n_layer=1, max_loops=4)
    params = R.init_params(cfg, 0, "float64")  # fixed and converge have the same parameters (no halting unit)
    for seed in range(50):
        tokens = _tokens(cfg, B=1, T=1, seed=seed)
        d = _run(backend, params, cfg.replace(halt="fixed"), tokens)["deltas"][0, 0, 0]  # (K,)
        if d[0] > d[1] and d[2] != d[1]:  # no halt at step 1 when tol = delta_2; step 3 decides away from the tie
            break
    else:
        pytest.fail("no token with delta_1 > delta_2 != delta_3 in 50 seeds")
    tol = float(d[1])
    aux = _run(backend, params, cfg.replace(converge_tol=tol), tokens)
    n_expected = 3 if d[2] < tol else 4
    _assert_runs_exactly(aux, n_expected)
    K = cfg.max_loops
    np.testing.assert_array_equal(aux["deltas"][0, 0, 0, :n_expected], d[:n_expected])  # the same states while running
    assert np.all(aux["deltas"][0, 0, 0, n_expected:K] == 0)
