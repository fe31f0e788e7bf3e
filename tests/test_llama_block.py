"""The Llama block as a point of the family (issue 14, item 1): grouped-query attention (n_kv_head), the gated MLP
(activation="swiglu"), the norm epsilon (norm_eps) and the MLP width (ffn_hidden). Finite differences for the
hand-written backward passes (float64), the key/value-source hook with Hkv heads, FLOPs against torch's counter,
config validation. The backend-vs-reference cases are in tests/test_equivalence.py (OPS: attention*-gqa*,
mlp-swiglu, norm-*-eps; the drawn configs cover every new field)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import reference as R
from gpu import body as GB
from gpu.layers import rope_tables
from gpu.model import from_reference
from gradcheck import assert_grad_close
from reference import accounting, ops
from reference.body import ATTENTIONS as REF_ATTENTIONS
from reference.body import linear_attention

ATTENTION_OPS = {"softmax": (ops.attention_forward, ops.attention_backward),
                 "linear": (linear_attention.linear_attention_forward, linear_attention.linear_attention_backward)}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def projected(forward, dout):
    return lambda: float(np.sum(forward() * dout))


# ----------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("body", ATTENTION_OPS)
@pytest.mark.parametrize("use_rope", [True, False])
@pytest.mark.parametrize("n_kv", [1, 2])
def test_grouped_query_attention_backward(rng, body, use_rope, n_kv):
    """H = 4 query heads sharing Hkv = 1 or 2 key/value heads: dx, dW_qkv ((H + 2 Hkv) hd, D), dW_proj."""
    B, T, D, H = 2, 5, 16, 4
    forward, backward = ATTENTION_OPS[body]
    hd = D // H
    x = rng.standard_normal((B, T, D))
    w_qkv, w_proj = 0.5 * rng.standard_normal((D + 2 * n_kv * hd, D)), 0.5 * rng.standard_normal((D, D))
    rope = ops.rope_tables(T, hd, 10000.0, np, np.float64) if use_rope else None
    out, cache = forward(x, w_qkv, w_proj, H, rope, n_kv_head=n_kv)
    dout = rng.standard_normal(out.shape)
    dx, dqkv, dproj = backward(dout, cache)
    assert dqkv.shape == w_qkv.shape
    f = projected(lambda: forward(x, w_qkv, w_proj, H, rope, n_kv_head=n_kv)[0], dout)
    for arr, g, name in ((x, dx, "dx"), (w_qkv, dqkv, "dw_qkv"), (w_proj, dproj, "dw_proj")):
        assert_grad_close(f, arr, g, rng, label=f"{body} gqa {name}")


def test_grouped_query_attention_is_repeated_heads(rng):
    """Hkv key/value heads are exactly MHA whose k, v rows repeat each key/value head for its H / Hkv query heads
    (head j serves query heads j G .. j G + G - 1: HF's repeat_kv)."""
    B, T, D, H, n_kv = 2, 6, 12, 6, 2
    hd, G = D // H, H // n_kv
    x, w_proj = rng.standard_normal((B, T, D)), rng.standard_normal((D, D))
    w_qkv = rng.standard_normal((D + 2 * n_kv * hd, D))
    wq, wk, wv = np.split(w_qkv, [D, D + n_kv * hd])
    rep = lambda w: np.repeat(w.reshape(n_kv, hd, D), G, axis=0).reshape(H * hd, D)  # noqa: E731
    rope = ops.rope_tables(T, hd, 10000.0, np, np.float64)
    got, _ = ops.attention_forward(x, w_qkv, w_proj, H, rope, n_kv_head=n_kv)
    want, _ = ops.attention_forward(x, np.concatenate([wq, rep(wk), rep(wv)]), w_proj, H, rope)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_swiglu_backward(rng):
    x = rng.standard_normal((2, 3, 6))
    w_fc, w_gate, w_proj = rng.standard_normal((10, 6)), rng.standard_normal((10, 6)), rng.standard_normal((6, 10))
    out, cache = ops.swiglu_forward(x, w_fc, w_gate, w_proj)
    dout = rng.standard_normal(out.shape)
    grads = ops.swiglu_backward(dout, cache)
    f = projected(lambda: ops.swiglu_forward(x, w_fc, w_gate, w_proj)[0], dout)
    for arr, g, name in zip((x, w_fc, w_gate, w_proj), grads, ("dx", "dw_fc", "dw_gate", "dw_proj")):
        assert_grad_close(f, arr, g, rng, label=f"swiglu {name}")


def test_silu_activation(rng):
    x = rng.standard_normal((4, 9)) * 3
    out, cache = ops.activation_forward(x, "silu")
    np.testing.assert_allclose(out, x / (1 + np.exp(-x)), rtol=1e-14)
    dout = rng.standard_normal(out.shape)
    assert_grad_close(projected(lambda: ops.activation_forward(x, "silu")[0], dout), x,
                      ops.activation_backward(dout, cache), rng, label="silu")


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_norm_eps_backward(rng, kind):
    """A large eps (0.5) so that it matters: the backward reads it through the cached rstd."""
    x, w = 0.3 * rng.standard_normal((2, 3, 8)), rng.standard_normal(8)
    out, cache = ops.norm_forward(x, w, None, kind, eps=0.5)
    rms = np.sqrt(np.mean((x - (x.mean(-1, keepdims=True) if kind == "layernorm" else 0)) ** 2, -1, keepdims=True))
    np.testing.assert_allclose(out, (x - (x.mean(-1, keepdims=True) if kind == "layernorm" else 0))
                               / np.sqrt(rms ** 2 + 0.5) * w, rtol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = ops.norm_backward(dout, cache)
    f = projected(lambda: ops.norm_forward(x, w, None, kind, eps=0.5)[0], dout)
    assert_grad_close(f, x, dx, rng, label=f"{kind} eps dx")
    assert_grad_close(f, w, dw, rng, label=f"{kind} eps dw")


LLAMA_LIKE = dict(vocab_size=13, block_size=6, d_model=16, n_head=4, n_kv_head=2, activation="swiglu",
                  norm_eps=1e-6, ffn_hidden=24, tie_embeddings=False, n_prelude=1, n_layer=1, n_coda=1, max_loops=2,
                  halt="fixed", init_std=0.3)


@pytest.mark.parametrize("attention", sorted(REF_ATTENTIONS))
def test_model_gradients_with_the_llama_block(rng, attention):
    """The whole reference model with GQA, SwiGLU, norm_eps and an untied head: every parameter's gradient against
    finite differences of the loss."""
    cfg = R.LoopConfig(**LLAMA_LIKE, attention=attention)
    params = R.init_params(cfg, 1, "float64")
    tokens, targets = rng.integers(0, 13, (2, 6)), rng.integers(0, 13, (2, 6))
    _, grads = R.loss_and_grads(params, tokens, targets, cfg)
    assert {"core.0.mlp.gate.weight", "lm_head.weight"} <= set(grads)
    f = lambda: float(R.loss(params, tokens, targets, cfg)[0])  # noqa: E731
    for name in params:
        assert_grad_close(f, params[name], grads[name], rng, n_dirs=1, label=name)


# ----------------------------------------------------------------------------- torch: the key/value source
@pytest.mark.parametrize("body", sorted(GB.ATTENTIONS))
@pytest.mark.parametrize("n_kv", [1, 2])
def test_equivalence_attend_with_grouped_key_values(rng, body, n_kv):
    """project() returns k, v with Hkv heads (what a KV cache stores); attend() of some query positions against them
    gives exactly the rows of the reference body's full causal attention (float64), and so does forward()."""
    B, T = 2, 7
    cfg = R.LoopConfig(d_model=16, n_head=4, n_kv_head=n_kv, block_size=8, attention=body)
    x = rng.normal(size=(B, T, cfg.d_model))
    params = {name: rng.normal(0, 0.5, spec.shape) for name, spec in REF_ATTENTIONS[body].param_specs("a", cfg).items()}
    cs_ref = ops.rope_tables(T, cfg.head_dim, cfg.rope_base, np, np.float64)
    expected, _ = REF_ATTENTIONS[body].forward(params, "a", x, cfg, cs_ref)
    attn = GB.ATTENTIONS[body](cfg).double()
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.from_numpy(params["a.qkv.weight"]))
        attn.proj.weight.copy_(torch.from_numpy(params["a.proj.weight"]))
    cs, xt = rope_tables(T, cfg.head_dim, cfg.rope_base), torch.from_numpy(x)
    q, k, v = attn.project(xt, torch.arange(T).expand(B, T), cs)
    assert q.shape[1] == 4 and k.shape[1] == v.shape[1] == n_kv
    positions = torch.tensor([[0, 3, 6], [1, 2, 5]])
    x_q = torch.gather(xt, 1, positions[..., None].expand(B, 3, cfg.d_model))
    got = attn.attend(x_q, positions, k, v, cs).detach().numpy()
    np.testing.assert_allclose(got, np.take_along_axis(expected, positions.numpy()[..., None], 1), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(attn(xt, cs).detach().numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attention", sorted(GB.ATTENTIONS))
@pytest.mark.parametrize("executor", ["masked", "compact"])
def test_equivalence_llama_block_executors_and_kv_cache(attention, executor):
    """GQA + SwiGLU + norm_eps under each executor equal the reference (float64, adaptive depth), and decoding with
    the key/value cache (keys/values of Hkv heads) gives the tokens and depths of recomputing the window."""
    from gpu.generate import generate
    cfg = R.LoopConfig(**{**LLAMA_LIKE, "halt": "act", "max_loops": 3, "halt_bias_init": -0.5, "block_size": 12},
                       attention=attention)
    params = R.init_params(cfg, 2, "float64")
    x = np.random.default_rng(5).integers(0, 13, (2, 9))
    logits, aux = R.forward(params, x, cfg)
    model = from_reference(params, cfg, executor=executor)
    got, _, got_aux = model(torch.from_numpy(x))
    np.testing.assert_array_equal(got_aux["n_steps"].numpy(), aux["n_steps"])
    np.testing.assert_allclose(got.detach().numpy(), logits, rtol=1e-10, atol=1e-12)
    if executor != "masked":
        return  # the cache decodes under the masked executor's semantics (gpu/cache.py)
    cached, d1 = generate(model, torch.from_numpy(x[:, :4]), 8, use_cache=True)
    recomputed, d2 = generate(model, torch.from_numpy(x[:, :4]), 8, use_cache=False)
    assert torch.equal(cached, recomputed) and torch.allclose(d1, d2)


# ----------------------------------------------------------------------------- accounting and config
@pytest.mark.parametrize("overrides", [dict(n_kv_head=1), dict(n_kv_head=2, activation="swiglu", ffn_hidden=20),
                                       dict(activation="swiglu")])
def test_flops_equal_torch_counter(overrides):
    """The accounting of the new pieces, exactly, against torch's FLOP counter (see tests/test_flop_counter.py)."""
    cfg = R.LoopConfig(vocab_size=11, block_size=6, d_model=8, n_head=2, max_loops=3, halt="fixed", **overrides)
    model = from_reference(R.init_params(cfg, 0, "float64"), cfg)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 11, (2, 6)))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
        model(tokens)
    assert float(counter.get_total_flops()) == accounting.flops_per_token(cfg, seq_len=6, training=False) * 12


def test_existing_configs_keep_their_parameters():
    """Defaults are the multi-head, two-matrix MLP of before: names, shapes and the seeded draw unchanged."""
    cfg = R.LoopConfig()
    shapes = R.param_shapes(cfg)
    assert shapes["core.0.attn.qkv.weight"] == (3 * 64, 64) and "core.0.mlp.gate.weight" not in shapes
    assert R.param_shapes(cfg.replace(n_kv_head=cfg.n_head)) == shapes  # n_kv_head = n_head is plain MHA
    gqa = R.param_shapes(cfg.replace(n_kv_head=1, activation="swiglu"))
    assert gqa["core.0.attn.qkv.weight"] == (64 + 2 * 16, 64) and gqa["core.0.mlp.gate.weight"] == (256, 64)


@pytest.mark.parametrize("overrides,message", [
    (dict(n_head=4, n_kv_head=3), r"LoopConfig.n_kv_head=3 is invalid: expected a divisor of n_head=4"),
    (dict(n_kv_head=-1), r"LoopConfig.n_kv_head=-1 is invalid: expected an int >= 0"),
    (dict(norm_eps=0.0), r"LoopConfig.norm_eps=0.0 is invalid: expected a number > 0"),
    (dict(activation="swiglu", ffn="moe"), r"activation='swiglu' is invalid: expected gelu or relu with ffn='moe'"),
    (dict(activation="silu"), r"LoopConfig.activation='silu' is invalid: expected one of \('gelu', 'relu', 'swiglu'\)"),
])
def test_bad_llama_fields_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        R.LoopConfig(**overrides)
