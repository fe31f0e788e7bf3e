"""Contraction checks: power iterations against dense linear algebra, and the seed's numpy example."""
import numpy as np
from hypothesis import given, strategies as st

import reference as R
from cases import batch, random_params, small_config
from reference import contraction
from reference.loop import loop_map


def test_spectral_norm_matches_svd():
    w = np.random.default_rng(0).standard_normal((20, 12))
    assert abs(contraction.spectral_norm(w, iters=500) - np.linalg.norm(w, 2)) < 1e-8


def dense_jacobian(params, cfg, s, e, rope, h=1e-6):
    """The full Jacobian of the loop map by central differences, one column per state coordinate."""
    flat = s.reshape(-1)
    cols = []
    for i in range(flat.size):
        d = np.zeros_like(flat)
        d[i] = h
        plus = loop_map(params, 0, (flat + d).reshape(s.shape), e, cfg, rope)
        minus = loop_map(params, 0, (flat - d).reshape(s.shape), e, cfg, rope)
        cols.append(((plus - minus) / (2 * h)).reshape(-1))
    return np.stack(cols, axis=1)


def test_lipschitz_matches_the_jacobian_norm():
    cfg = small_config(n_layer=1, input_injection="concat")
    params, (tokens, _) = random_params(cfg, 3), batch(cfg, 3, B=1, T=3)
    e, rope = contraction.loop_inputs(params, tokens, cfg)
    s = contraction.final_state(params, e, cfg, rope)
    expected = np.linalg.norm(dense_jacobian(params, cfg, s, e, rope), 2)
    got = contraction.lipschitz(params, tokens, cfg, iters=1000)  # sigma_2 / sigma_1 = 0.99 here
    assert abs(got - expected) <= 1e-6 * expected


def test_fixed_point_residual_and_delta_trajectory():
    cfg = small_config(halt="fixed", max_loops=6)
    params, (tokens, _) = random_params(cfg, 0), batch(cfg, 0)
    res = contraction.fixed_point_residual(params, tokens, cfg)
    assert res.shape == tokens.shape and np.all(res >= 0)
    # a zero step scale makes every state a fixed point
    still = dict(params, **{"loop.0.step_scale": np.zeros(cfg.d_model)})
    assert np.all(contraction.fixed_point_residual(still, tokens, cfg) == 0)
    _, aux = R.forward(params, tokens, cfg)
    traj = contraction.delta_trajectory(aux)
    assert traj.shape == (1, 6)
    np.testing.assert_allclose(traj[0], aux["deltas"][:, :, 0].mean(axis=(0, 1)))


def test_spectral_norms_cover_the_core():
    cfg = small_config(input_injection="concat")
    norms = contraction.spectral_norms(R.init_params(cfg, 0, "float64"), cfg)
    assert "core.0.attn.qkv.weight" in norms and "loop.0.inject.weight" in norms
    assert not any(n.startswith(("prelude", "coda", "embed")) for n in norms)


@given(seed=st.integers(0, 10_000), d=st.sampled_from([32, 64, 256]))
def test_seed_example_easy_input_halts_sooner(seed, d):
    """The seed document's example: iterating tanh(W x + b) with ||W||_2 = 0.7 contracts; starting near the
    fixed point (easy) needs fewer loops than starting far from it (hard), and every step is shorter."""
    rng = np.random.default_rng(seed + 1)
    W, b = contraction.contraction_example(d, seed=seed)
    _, xstar, _ = contraction.refine(np.zeros(d), W, b, tol=1e-10)
    easy_k, _, easy_deltas = contraction.refine(xstar + 0.01 * rng.standard_normal(d), W, b)
    hard_k, _, _ = contraction.refine(xstar + 5.0 * rng.standard_normal(d), W, b)
    assert all(later <= earlier + 1e-9 for earlier, later in zip(easy_deltas, easy_deltas[1:]))
    assert easy_k < hard_k
