"""Every reference op's hand-written backward against finite differences in float64."""
import numpy as np
import pytest

from gradcheck import HALT_MARGIN, assert_grad_close
from reference import halting, ops
from reference.body import linear_attention, memory, moe


def projected(forward, dout):
    """Scalar L = sum(forward() * dout): its gradient is the op's backward applied to dout."""
    return lambda: float(np.sum(forward() * dout))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_embedding_backward(rng):
    w = rng.standard_normal((11, 6))
    idx = rng.integers(0, 11, (3, 5))
    idx[0, :2] = 4  # repeated ids must accumulate
    out, cache = ops.embedding_forward(w, idx)
    dout = rng.standard_normal(out.shape)
    assert_grad_close(projected(lambda: ops.embedding_forward(w, idx)[0], dout), w,
                      ops.embedding_backward(dout, cache), rng, label="embedding")


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("affine", [True, False])
def test_norm_backward(rng, kind, affine):
    x = rng.standard_normal((2, 3, 8))
    w = rng.standard_normal(8) if affine else None
    b = rng.standard_normal(8) if affine and kind == "layernorm" else None
    out, cache = ops.norm_forward(x, w, b, kind)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = ops.norm_backward(dout, cache)
    f = projected(lambda: ops.norm_forward(x, w, b, kind)[0], dout)
    assert_grad_close(f, x, dx, rng, label="norm dx")
    if affine:
        assert_grad_close(f, w, dw, rng, label="norm dw")
    if b is not None:
        assert_grad_close(f, b, db, rng, label="norm db")


def test_linear_backward(rng):
    x, w = rng.standard_normal((2, 3, 5)), rng.standard_normal((7, 5))
    out, cache = ops.linear_forward(x, w)
    dout = rng.standard_normal(out.shape)
    dx, dw = ops.linear_backward(dout, cache)
    f = projected(lambda: ops.linear_forward(x, w)[0], dout)
    assert_grad_close(f, x, dx, rng, label="linear dx")
    assert_grad_close(f, w, dw, rng, label="linear dw")


@pytest.mark.parametrize("kind", ["gelu", "relu"])
def test_activation_backward(rng, kind):
    x = rng.standard_normal((4, 9))
    if kind == "relu":  # the kink at 0: keep every input a stated margin away from it
        x = np.where(np.abs(x) < 1e-2, 0.5, x)
    out, cache = ops.activation_forward(x, kind)
    dout = rng.standard_normal(out.shape)
    assert_grad_close(projected(lambda: ops.activation_forward(x, kind)[0], dout), x,
                      ops.activation_backward(dout, cache), rng, label=kind)


def test_rope_is_a_rotation(rng):
    cos, sin = ops.rope_tables(5, 8, 10000.0, np, np.float64)
    x = rng.standard_normal((2, 3, 5, 8))
    y = ops.rope_forward(x, cos, sin)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(ops.rope_backward(y, cos, sin), x, rtol=1e-12, atol=1e-12)
    # position 0 is not rotated; relative positions: <R_t q, R_s k> depends on t - s only
    np.testing.assert_allclose(y[:, :, 0], x[:, :, 0])
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    cos9, sin9 = ops.rope_tables(9, 8, 10000.0, np, np.float64)
    rq = ops.rope_forward(np.broadcast_to(q, (9, 8)).copy(), cos9, sin9)
    rk = ops.rope_forward(np.broadcast_to(k, (9, 8)).copy(), cos9, sin9)
    np.testing.assert_allclose(rq[5] @ rk[3], rq[4] @ rk[2], rtol=1e-10)


ATTENTION_OPS = {"softmax": (ops.attention_forward, ops.attention_backward),
                 "linear": (linear_attention.linear_attention_forward, linear_attention.linear_attention_backward)}


@pytest.mark.parametrize("body", ATTENTION_OPS)
@pytest.mark.parametrize("use_rope", [True, False])
def test_attention_backward(rng, use_rope, body):
    B, T, D, H = 2, 5, 8, 2
    forward, backward = ATTENTION_OPS[body]
    x = rng.standard_normal((B, T, D))
    w_qkv, w_proj = 0.5 * rng.standard_normal((3 * D, D)), 0.5 * rng.standard_normal((D, D))
    rope = ops.rope_tables(T, D // H, 10000.0, np, np.float64) if use_rope else None
    out, cache = forward(x, w_qkv, w_proj, H, rope)
    dout = rng.standard_normal(out.shape)
    dx, dqkv, dproj = backward(dout, cache)
    f = projected(lambda: forward(x, w_qkv, w_proj, H, rope)[0], dout)
    assert_grad_close(f, x, dx, rng, label="attention dx")
    assert_grad_close(f, w_qkv, dqkv, rng, label="attention dw_qkv")
    assert_grad_close(f, w_proj, dproj, rng, label="attention dw_proj")


def test_attention_is_causal(rng):
    B, T, D, H = 1, 6, 8, 2
    x = rng.standard_normal((B, T, D))
    w_qkv, w_proj = rng.standard_normal((3 * D, D)), rng.standard_normal((D, D))
    out, _ = ops.attention_forward(x, w_qkv, w_proj, H)
    x2 = x.copy()
    x2[:, 4:] += 10.0
    out2, _ = ops.attention_forward(x2, w_qkv, w_proj, H)
    np.testing.assert_array_equal(out[:, :4], out2[:, :4])
    assert not np.allclose(out[:, 4:], out2[:, 4:])


def test_mlp_backward(rng):
    x = rng.standard_normal((2, 3, 6))
    w_fc, w_proj = rng.standard_normal((24, 6)), rng.standard_normal((6, 24))
    out, cache = ops.mlp_forward(x, w_fc, w_proj)
    dout = rng.standard_normal(out.shape)
    dx, dfc, dproj = ops.mlp_backward(dout, cache)
    f = projected(lambda: ops.mlp_forward(x, w_fc, w_proj)[0], dout)
    for arr, g, name in ((x, dx, "dx"), (w_fc, dfc, "dw_fc"), (w_proj, dproj, "dw_proj")):
        assert_grad_close(f, arr, g, rng, label=f"mlp {name}")


@pytest.mark.parametrize("k,activation", [(2, "gelu"), (1, "relu"), (4, "gelu")])
def test_moe_backward(rng, k, activation):
    """sigma-MoE with the balance statistic's gradient dp: L = sum(y * dy) + sum(softmax(z) * dp), on a draw whose
    top-k margin exceeds HALT_MARGIN (a finite-difference step must not change the selected experts)."""
    E, D, Fe = 4, 6, 5
    while True:
        x, w_sel = rng.standard_normal((2, 3, D)), rng.standard_normal((E, D))
        if moe.top_k(x @ w_sel.T, k)[1].min() > HALT_MARGIN:
            break
    w_fc, w_proj = rng.standard_normal((E, Fe, D)), rng.standard_normal((E, D, Fe))
    if activation == "relu":  # the kink at 0: keep every hidden pre-activation a stated margin away from it
        assert np.abs(np.einsum("btd,efd->btef", x, w_fc)).min() > 1e-3
    y, p, _, cache = moe.moe_forward(x, w_sel, w_fc, w_proj, k, activation)
    dy, dp = rng.standard_normal(y.shape), rng.standard_normal(p.shape)
    grads = moe.moe_backward(dy, cache, dp)

    def f():
        y, p, _, _ = moe.moe_forward(x, w_sel, w_fc, w_proj, k, activation)
        return float(np.sum(y * dy) + np.sum(p * dp))

    for arr, g, name in zip((x, w_sel, w_fc, w_proj), grads, ("dx", "dw_sel", "dw_fc", "dw_proj")):
        assert_grad_close(f, arr, g, rng, label=f"moe {name}")
    p_bar = rng.dirichlet(np.ones(E), size=3)
    assert_grad_close(lambda: float(np.sum(moe.term(p_bar))), p_bar, moe.term_backward(p_bar), rng, label="balance")


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_memory_backward(rng, kind):
    """Gated reads of two banks: every input (h, norm_q, gate, each bank's slots, norm_k and read projection)."""
    D = 6
    h = rng.standard_normal((2, 3, D))
    norm = lambda: (rng.normal(1, 0.3, D), rng.normal(0, 0.3, D) if kind == "layernorm" else None)  # noqa: E731
    q_norm, gate = norm(), (rng.standard_normal((2, D)), rng.standard_normal(2))
    reads = [(rng.standard_normal((S, D)), rng.standard_normal((S, D)), *norm(), rng.standard_normal((D, D)))
             for S in (3, 5)]
    out, cache = memory.memory_forward(h, q_norm, gate, reads, kind)
    dout = rng.standard_normal(out.shape)
    dh, dq_norm, dgate, dreads = memory.memory_backward(dout, cache)
    f = projected(lambda: memory.memory_forward(h, q_norm, gate, reads, kind)[0], dout)
    pairs = [(h, dh), *zip(q_norm, dq_norm), *zip(gate, dgate)]
    pairs += [(a, g) for read, dread in zip(reads, dreads) for a, g in zip(read, dread)]
    for i, (arr, g) in enumerate(pairs):
        if arr is not None:
            assert_grad_close(f, arr, g, rng, label=f"memory input {i}")


def test_cross_entropy(rng):
    logits = rng.standard_normal((2, 4, 7))
    targets = rng.integers(0, 7, (2, 4))
    targets[1, 2] = -1  # ignored position
    loss, cache = ops.cross_entropy_forward(logits, targets)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    valid = targets >= 0
    expected = -np.mean(np.log(p[valid, targets[valid]]))
    assert abs(loss - expected) < 1e-12
    dlogits = ops.cross_entropy_backward(1.0, cache)
    assert np.all(dlogits[1, 2] == 0)
    assert_grad_close(lambda: float(ops.cross_entropy_forward(logits, targets)[0]), logits, dlogits, rng,
                      label="cross-entropy")
    with pytest.raises(ValueError, match="ignore index"):
        ops.cross_entropy_forward(logits, np.full((2, 4), -1))


def _signals_away_from_flips(rng, rule, shape, K, lo, hi):
    """Draw halting signals until no halting statistic lies within HALT_MARGIN of its threshold (the only
    case excluded: there a finite-difference step could flip N)."""
    while True:
        sig = rng.uniform(lo, hi, shape + (K,))
        if np.min(rule(sig).margin) > HALT_MARGIN:
            return sig


@pytest.mark.parametrize("min_loops", [1, 2])
def test_act_backward(rng, min_loops):
    eps, K = 0.01, 5
    h = _signals_away_from_flips(rng, lambda s: halting.act(s, eps, min_loops), (3, 4), K, 0.05, 0.6)
    assert len(np.unique(halting.act(h, eps, min_loops).n_steps)) > 1
    dw, dp = rng.standard_normal(h.shape), rng.standard_normal(h.shape[:-1])
    dh = halting.act_backward(h, eps, min_loops, dw, dp)

    def f():
        r = halting.act(h, eps, min_loops)
        return float(np.sum(r.weights * dw) + np.sum(r.ponder_cost * dp))

    assert_grad_close(f, h, dh, rng, label="act")


@pytest.mark.parametrize("min_loops", [1, 3])
def test_pondernet_backward(rng, min_loops):
    eps, K, prior = 0.01, 6, 0.3
    lam = _signals_away_from_flips(rng, lambda s: halting.pondernet(s, eps, min_loops, prior), (3, 4), K, 0.1, 0.9)
    dw, dp, dk = rng.standard_normal(lam.shape), rng.standard_normal(lam.shape[:-1]), rng.standard_normal(lam.shape[:-1])
    dlam = halting.pondernet_backward(lam, eps, min_loops, prior, dw, dp, dk)

    def f():
        r = halting.pondernet(lam, eps, min_loops, prior)
        return float(np.sum(r.weights * dw) + np.sum(r.ponder_cost * dp) + np.sum(r.kl * dk))

    assert_grad_close(f, lam, dlam, rng, label="pondernet")
