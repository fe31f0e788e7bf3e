"""Properties of the halting rules (hypothesis), straight from their definitions."""
import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from reference import halting


@st.composite
def signals(draw, lo=0.0, hi=1.0):
    K = draw(st.integers(1, 8))
    shape = draw(st.sampled_from([(1,), (3,), (2, 3)]))
    values = draw(arrays(np.float64, shape + (K,), elements=st.floats(lo, hi, allow_nan=False)))
    min_loops = draw(st.integers(1, K))
    eps = draw(st.sampled_from([0.01, 0.05, 0.1]))
    return values, min_loops, eps


@given(signals())
def test_act_properties(args):
    h, min_loops, eps = args
    K = h.shape[-1]
    res = halting.act(h, eps, min_loops)
    w, N, R = res.weights, res.n_steps, res.remainder
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    assert np.all((1 <= N) & (N <= K)) and np.all(N >= min_loops)
    assert np.all((R > 0) & (R <= 1))
    np.testing.assert_allclose(res.ponder_cost, N + R, rtol=1e-14)
    # Graves' definition, token by token
    for idx in np.ndindex(h.shape[:-1]):
        hh = np.where(np.arange(1, K + 1) < min_loops, 0.0, h[idx])
        cum = np.cumsum(hh)
        crossed = [n for n in range(1, K + 1) if cum[n - 1] >= 1 - eps]
        n_expected = crossed[0] if crossed else K
        assert N[idx] == n_expected
        np.testing.assert_allclose(R[idx], 1 - hh[: n_expected - 1].sum(), rtol=1e-12, atol=1e-15)
        assert np.all(w[idx][n_expected:] == 0)


@given(signals(), st.sampled_from([0.2, 0.5, 0.8]))
def test_pondernet_properties(args, prior):
    lam, min_loops, eps = args
    K = lam.shape[-1]
    res = halting.pondernet(lam, eps, min_loops, prior)
    p = res.weights
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    assert np.all(p[..., : min_loops - 1] == 0)
    assert np.all((res.n_steps >= min_loops) & (res.n_steps <= K))
    assert np.all(res.kl >= -1e-12)
    np.testing.assert_allclose(res.ponder_cost, (p * np.arange(1, K + 1)).sum(-1), rtol=1e-12)
    # p_n = lambda_n prod_{j<n} (1 - lambda_j) for n < K
    lam0 = np.where(np.arange(1, K + 1) < min_loops, 0.0, lam)
    for n in range(K - 1):
        np.testing.assert_allclose(p[..., n], lam0[..., n] * np.prod(1 - lam0[..., :n], axis=-1), rtol=1e-12,
                                   atol=1e-300)


@given(st.integers(1, 10), st.sampled_from([0.1, 0.5, 0.9]), st.integers(1, 10))
def test_geometric_prior_is_a_distribution(K, prior, min_loops):
    min_loops = min(min_loops, K)
    q = halting.geometric_prior(K, prior, min_loops)
    np.testing.assert_allclose(q.sum(), 1.0)
    assert np.all(q[: min_loops - 1] == 0) and np.all(q[min_loops - 1:] > 0)
    assert np.all(np.diff(q[min_loops - 1:-1]) <= 0)  # geometric before the truncation step


@given(st.integers(1, 8), st.sampled_from([0.1, 0.3, 0.7]), st.integers(1, 8))
def test_pondernet_kl_is_zero_at_the_prior(K, prior, min_loops):
    """A constant lambda_n = lambda_p is exactly the prior, so the KL vanishes."""
    min_loops = min(min_loops, K)
    res = halting.pondernet(np.full((1, K), prior), eps=1e-9, min_loops=min_loops, prior=prior)
    np.testing.assert_allclose(res.weights[0], halting.geometric_prior(K, prior, min_loops), rtol=1e-12)
    assert abs(res.kl[0]) < 1e-12


@given(signals(0.0, 0.3), st.sampled_from([0.05, 0.1]))
def test_converge_halts_at_the_first_small_change(args, tol):
    deltas, min_loops, _ = args
    K = deltas.shape[-1]
    res = halting.converge(deltas, tol, min_loops)
    for idx in np.ndindex(deltas.shape[:-1]):
        small = [n for n in range(min_loops, K + 1) if deltas[idx][n - 1] < tol]
        assert res.n_steps[idx] == (small[0] if small else K)
    np.testing.assert_array_equal(res.weights.argmax(-1) + 1, res.n_steps)


def test_act_graves_example():
    """h = (0.1, 0.3, 0.4, 0.5): the sum reaches 0.8 < 0.99 at step 3 and 1.3 at step 4, so N = 4, R = 0.2."""
    res = halting.act(np.array([0.1, 0.3, 0.4, 0.5]), eps=0.01)
    assert res.n_steps == 4
    np.testing.assert_allclose(res.remainder, 0.2)
    np.testing.assert_allclose(res.weights, [0.1, 0.3, 0.4, 0.2])
    np.testing.assert_allclose(res.ponder_cost, 4.2)
