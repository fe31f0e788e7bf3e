"""The equivalence suite (`pytest -k equivalence`): every backend computes what the numpy reference computes.

Levels: each op and halting rule (forward and gradient), the model forward (logits, loss, every aux entry), every
parameter gradient, the losses of 10 AdamW steps with clipping, determinism, weight interchange, torch.compile.
Backends are parameters (torch-cpu always; torch-cuda, cupy where a CUDA device is present); tolerances and the
halting-flip rule live in equivalence_helpers.TOLERANCES. See docs/equivalence.md.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import reference as R
from equivalence_helpers import (TOLERANCES, TORCH_DTYPES, assert_close, assert_compiled_matches_eager, autocast,
                                 aux_margin, backend_params, configs, min_margin, model_cases, perturbed_params, random_batch, round_to, run_model, storage_dtype,
                                 to_numpy, torch_device)
from gpu import halting as GH
from gpu import layers as L
from gpu.body.mlp import mlp as torch_mlp, swiglu as torch_swiglu
from gpu.body.linear_attention import linear_attention as torch_linear_attention
from gpu.body.softmax_attention import attention as torch_attention
from gpu.model import LoopedTransformer, from_reference, load, save
from reference import halting as RH
from reference import ops, optim, weights
from reference.body import linear_attention as RL
from reference.config import HALT_MODES, LOOP_SCOPES
from reference.model import AUX_KEYS
from test_bodies import BODY_OPS  # the op cases of the MoE, its balance term and the memory banks

ALL = backend_params()


# ----------------------------------------------------------------------------- ops
# Each op: inputs(rng, B, T, D, H) -> dict of arrays; ref(**inputs) -> (out, backward(dout) -> dict of input grads),
# written with reference.ops (so it also runs on CuPy arrays); tch(**tensors) -> out, written with gpu.layers.
def _norm_case(kind, gain, eps=1e-5):
    def inputs(rng, B, T, D, H):
        out = dict(x=rng.normal(0.3, 1.5, (B, T, D)))
        if gain:
            out["w"] = rng.normal(1, 0.3, D)
            if kind == "layernorm":
                out["b"] = rng.normal(0, 0.3, D)
        return out

    def ref(x, w=None, b=None):
        y, c = ops.norm_forward(x, w, b, kind=kind, eps=eps)
        return y, lambda dy: dict(zip("xwb", ops.norm_backward(dy, c)))

    return inputs, ref, lambda x, w=None, b=None: L.norm(x, w, b, kind, eps)


def _rope_case():
    def ref(x):
        cos, sin = ops.rope_tables(x.shape[2], x.shape[3], 100.0, ops.xp_of(x), x.dtype)
        return ops.rope_forward(x, cos, sin), lambda dy: dict(x=ops.rope_backward(dy, cos, sin))

    def tch(x):
        return L.rope(x, *L.rope_tables(x.shape[2], x.shape[3], 100.0, x.device))

    return (lambda rng, B, T, D, H: dict(x=rng.normal(size=(B, H, T, 2 * D // H)))), ref, tch


def _attention_case(use_rope, forward=ops.attention_forward, backward=ops.attention_backward, tch_op=torch_attention,
                    kv=None):
    """kv=1: grouped-query attention with one key/value head shared by all H query heads (multi-query)."""
    def inputs(rng, B, T, D, H):
        rows = D + 2 * (kv or H) * (D // H)  # q, k, v rows: 3D for multi-head attention
        return dict(x=rng.normal(size=(B, T, D)), w_qkv=rng.normal(0, 0.5, (rows, D)),
                    w_proj=rng.normal(0, 0.5, (D, D)))

    def ref(x, w_qkv, w_proj, H):
        cs = ops.rope_tables(x.shape[1], x.shape[2] // H, 10000.0, ops.xp_of(x), x.dtype) if use_rope else None
        out, c = forward(x, w_qkv, w_proj, H, cs, n_kv_head=kv)
        return out, lambda dy: dict(zip(("x", "w_qkv", "w_proj"), backward(dy, c)))

    def tch(x, w_qkv, w_proj, H):
        cs = L.rope_tables(x.shape[1], x.shape[2] // H, 10000.0, x.device) if use_rope else None
        return tch_op(x, w_qkv, w_proj, H, cs, n_kv_head=kv)

    return inputs, ref, tch


def _mlp_case(act):
    def inputs(rng, B, T, D, H):
        return dict(x=rng.normal(size=(B, T, D)), w_fc=rng.normal(0, 0.7, (3 * D, D)),
                    w_proj=rng.normal(0, 0.5, (D, 3 * D)))

    def ref(x, w_fc, w_proj):
        out, c = ops.mlp_forward(x, w_fc, w_proj, act)
        return out, lambda dy: dict(zip(("x", "w_fc", "w_proj"), ops.mlp_backward(dy, c)))

    return inputs, ref, lambda x, w_fc, w_proj: torch_mlp(x, w_fc, w_proj, act)


def _swiglu_case():
    def inputs(rng, B, T, D, H):
        return dict(x=rng.normal(size=(B, T, D)), w_fc=rng.normal(0, 0.7, (3 * D, D)),
                    w_gate=rng.normal(0, 0.7, (3 * D, D)), w_proj=rng.normal(0, 0.5, (D, 3 * D)))

    def ref(x, w_fc, w_gate, w_proj):
        out, c = ops.swiglu_forward(x, w_fc, w_gate, w_proj)
        return out, lambda dy: dict(zip(("x", "w_fc", "w_gate", "w_proj"), ops.swiglu_backward(dy, c)))

    return inputs, ref, torch_swiglu


def _cross_entropy_case():
    def inputs(rng, B, T, D, H):
        targets = np.where(rng.random((B, T)) < 0.3, -1, rng.integers(0, D, (B, T)))
        targets[0, 0] = 0
        return dict(logits=rng.normal(0, 2, (B, T, D)), targets=targets)

    def ref(logits, targets):
        loss, c = ops.cross_entropy_forward(logits, targets)
        return loss, lambda dloss: dict(logits=ops.cross_entropy_backward(dloss, c))

    def tch(logits, targets):  # what LoopedTransformer.loss uses
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    return inputs, ref, tch


OPS = {"norm-rmsnorm": _norm_case("rmsnorm", True), "norm-layernorm": _norm_case("layernorm", True),
       "norm-rmsnorm-nogain": _norm_case("rmsnorm", False), "norm-layernorm-nogain": _norm_case("layernorm", False),
       "norm-rmsnorm-eps": _norm_case("rmsnorm", True, eps=0.3), "norm-layernorm-eps": _norm_case("layernorm", True, 0.3),
       "rope": _rope_case(), "attention": _attention_case(False), "attention-rope": _attention_case(True),
       **{f"attention-linear{r}": _attention_case(bool(r), RL.linear_attention_forward, RL.linear_attention_backward,
                                                  torch_linear_attention) for r in ("", "-rope")},
       **{f"attention{b}-gqa{r}": _attention_case(bool(r), *ops_, kv=1) for r in ("", "-rope") for b, ops_ in
          (("", (ops.attention_forward, ops.attention_backward, torch_attention)),
           ("-linear", (RL.linear_attention_forward, RL.linear_attention_backward, torch_linear_attention)))},
       "mlp-gelu": _mlp_case("gelu"), "mlp-relu": _mlp_case("relu"), "mlp-swiglu": _swiglu_case(),
       "cross_entropy": _cross_entropy_case(),
       **BODY_OPS}  # an entry may carry a 4th function: the margin of its threshold decision (MoE top-k)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,dtype", ALL)
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_equivalence_op(op, backend, dtype, seed):
    """Each op, forward and backward (random upstream gradient): the reference's hand-written backward vs
    autograd through gpu.layers (torch), or the reference itself on CuPy arrays (cupy). A draw whose decision
    margin (an MoE's top-k gap) is under the flip margin is excluded, as for halting."""
    make_inputs, ref, tch, *margin = OPS[op]
    rng = np.random.default_rng(seed)
    H = int(rng.integers(1, 4))
    B, T = int(rng.integers(1, 4)), int(rng.integers(1, 9))
    D = H * 2 * int(rng.integers(2 if H == 1 else 1, 4))  # even head width, D >= 4 (see HEADS)
    inputs = round_to(make_inputs(rng, B, T, D, H), dtype)
    assume(not margin or margin[0](inputs) > TOLERANCES[dtype]["flip_margin"])
    kw = dict(H=H) if op.startswith("attention") else {}
    expected, backward = ref(**inputs, **kw)
    dout = rng.normal(size=np.shape(expected)) if np.ndim(expected) else 1.0 + rng.random()
    expected_grads = {k: g for k, g in backward(dout).items() if g is not None}
    if backend == "cupy":
        import cupy
        dev = {k: cupy.asarray(v.astype(storage_dtype(dtype)) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
        out, backward = ref(**dev, **kw)
        grads = backward(cupy.asarray(dout, dtype=storage_dtype(dtype)) if np.ndim(dout) else dout)
    else:
        device = torch_device(backend)
        dev = {k: torch.tensor(v, dtype=TORCH_DTYPES[dtype] if v.dtype.kind == "f" else torch.int64, device=device,
                               requires_grad=v.dtype.kind == "f") for k, v in inputs.items()}
        with autocast(backend, dtype):
            out = tch(**dev, **kw)
        out.backward(torch.as_tensor(dout, dtype=out.dtype, device=device))
        grads = {k: v.grad for k, v in dev.items() if v.requires_grad}
    assert_close(to_numpy(out), expected, dtype, f"{op} forward")
    for k, g in expected_grads.items():
        assert_close(to_numpy(grads[k]), g, dtype, f"{op} d{k}")


# ----------------------------------------------------------------------------- halting rules
HALT_FIELDS = ("weights", "remainder", "ponder_cost", "kl", "margin")


@pytest.mark.parametrize("rule", sorted(RH.RULES))
@pytest.mark.parametrize("backend,dtype", ALL)
@given(seed=st.integers(0, 2 ** 32 - 1), K=st.integers(1, 6), eps=st.sampled_from([0.01, 0.1, 0.3]),
       prior=st.floats(0.1, 0.9), data=st.data())
def test_equivalence_halting(rule, backend, dtype, seed, K, eps, prior, data):
    """Every registered rule: reference.halting's resolve vs gpu.halting's (or the reference on CuPy), every
    output, and the gradient of a random linear function of (weights, ponder cost, kl) w.r.t. the signals:
    autograd vs the reference's hand-written resolve_backward. The same draw serves as signals and deltas."""
    min_loops = data.draw(st.integers(1, K))
    cfg = R.LoopConfig(halt=rule, max_loops=K, min_loops=min_loops, act_eps=eps, pondernet_prior=prior,
                       converge_tol=0.25)
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5)))
    x = round_to(dict(x=rng.uniform(0, 1 if rule != "converge" else 0.5, shape + (K,))), dtype)["x"]
    dw, dp, dk = rng.normal(size=shape + (K,)), rng.normal(size=shape), rng.normal(size=shape)
    ref_rule, torch_rule = RH.get_rule(rule), GH.get_rule(rule)
    expected = ref_rule.resolve(x, x, cfg)
    assume(float(expected.margin.min()) > TOLERANCES[dtype]["flip_margin"])
    dsig = ref_rule.resolve_backward(x, cfg, dw, dp, dk)
    grad = None
    if backend == "cupy":
        import cupy
        v = cupy.asarray(x.astype(storage_dtype(dtype)))
        res = ref_rule.resolve(v, v, cfg)
    else:
        v = torch.tensor(x, dtype=TORCH_DTYPES[dtype], device=torch_device(backend), requires_grad=True)
        res = torch_rule.resolve(v, v, cfg)
        if dsig is not None:
            def t(a):
                return torch.as_tensor(a, dtype=v.dtype, device=v.device)
            f = (res.weights * t(dw)).sum() + (res.ponder_cost * t(dp)).sum() + (res.kl * t(dk)).sum()
            (g,) = torch.autograd.grad(f, v, allow_unused=True) if f.requires_grad else (None,)
            grad = np.zeros(x.shape) if g is None else to_numpy(g)  # K = 1 PonderNet: p = (1,) ignores lambda
    np.testing.assert_array_equal(to_numpy(res.n_steps), expected.n_steps)
    for field in HALT_FIELDS:
        assert_close(to_numpy(getattr(res, field)), getattr(expected, field), dtype, f"{rule} {field}")
    if grad is not None:
        assert_close(grad, dsig, dtype, f"{rule} d signals")


# ----------------------------------------------------------------------------- the model
AUX_FLOAT_KEYS = [k for k in AUX_KEYS if k != "n_steps"]


def check_model(backend, dtype, cfg, params, tokens, targets, grads=True, loops=None, executor="masked"):
    """Backend vs reference on one case: loss, logits, N(t) exactly, every other aux entry, every gradient.
    loops: the backend's per-call loop count, against the reference with cfg.replace(max_loops=loops)."""
    p = round_to(params, dtype)
    ref_cfg = cfg if loops is None else cfg.replace(max_loops=loops)
    loss, g_ref, logits, aux = R.forward_backward(p, tokens, targets, ref_cfg)
    a_loss, a_grads, a_logits, a_aux = run_model(backend, dtype, p, cfg, tokens, targets, loops, executor)
    np.testing.assert_array_equal(a_aux["n_steps"], aux["n_steps"], err_msg="N(t)")
    assert_close(a_loss, loss, dtype, "loss")
    assert_close(a_logits, logits, dtype, "logits")
    for key in AUX_FLOAT_KEYS:
        assert_close(a_aux[key], aux[key], dtype, f"aux[{key!r}]")
    if grads:
        assert sorted(a_grads) == sorted(g_ref)
        scale = max(np.abs(g).max() for g in g_ref.values())
        for name in g_ref:
            assert_close(a_grads[name], g_ref[name], dtype, f"d loss / d {name}", scale=scale, grad=True)
    return aux


@pytest.mark.parametrize("backend,dtype", ALL)
@given(data=st.data())
def test_equivalence_forward(backend, dtype, data):
    """Model forward on drawn configs: logits, loss, halting weights, N(t), remainders, ponder cost, kl, deltas."""
    cfg, params, tokens, targets = data.draw(model_cases(dtype))
    check_model(backend, dtype, cfg, params, tokens, targets, grads=False)


@pytest.mark.parametrize("backend,dtype", ALL)
@given(data=st.data())
def test_equivalence_gradients(backend, dtype, data):
    """Every parameter gradient: reference.forward_backward's hand-written backward vs autograd."""
    cfg, params, tokens, targets = data.draw(model_cases(dtype))
    check_model(backend, dtype, cfg, params, tokens, targets)


EDGE_CASES = {
    "max_loops=1": dict(max_loops=1, min_loops=1),
    "min_loops=max_loops": dict(max_loops=3, min_loops=3),
    "no-prelude-no-coda": dict(n_prelude=0, n_coda=0),
    "layer-scope-3-core-blocks": dict(loop_scope="layer", n_layer=3),
    "untied-head-no-rope": dict(tie_embeddings=False, rope=False),
}
EDGE_BASE = dict(vocab_size=13, block_size=8, d_model=8, n_head=2, n_prelude=1, n_layer=2, n_coda=1, max_loops=4,
                 halt_bias_init=-1.0, converge_tol=0.2, init_std=0.3, halt_penalty=0.1, pondernet_beta=0.03)
# halt_penalty and pondernet_beta differ, so a backend that swaps the two coefficients fails


def away_from_flips(cfg, dtype, B=2, T=7):
    """(params, tokens, targets) of the first seed whose halting margin exceeds the flip margin at dtype."""
    for seed in range(50):
        params, (tokens, targets) = perturbed_params(cfg, seed), random_batch(cfg, seed, B, T)
        if min_margin(round_to(params, dtype), tokens, cfg) > TOLERANCES[dtype]["flip_margin"]:
            return params, tokens, targets
    raise AssertionError(f"no seed kept halting {TOLERANCES[dtype]['flip_margin']} away from its thresholds: {cfg}")


@pytest.mark.parametrize("halt", HALT_MODES)
@pytest.mark.parametrize("edge", EDGE_CASES)
@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64", "float32")))
def test_equivalence_edge_cases(backend, dtype, edge, halt):
    """Explicit edge configs in every halting mode: forward, aux and every gradient."""
    fields = {**EDGE_BASE, **EDGE_CASES[edge], "halt": halt}
    if RH.get_rule(halt).expected_exit_loss and fields.get("loop_scope") == "layer":
        with pytest.raises(ValueError, match="one loop group"):
            R.LoopConfig(**fields)
        return
    cfg = R.LoopConfig(**fields)
    check_model(backend, dtype, cfg, *away_from_flips(cfg, dtype))


@pytest.mark.parametrize("scope", LOOP_SCOPES)
@pytest.mark.parametrize("halt", ["act", "pondernet", "converge"])
@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64",)))
def test_equivalence_varied_depth(backend, dtype, halt, scope):
    """Guards the suite's power: in these cases N(t) really differs across tokens, and still agrees."""
    eps = 0.3 if halt == "pondernet" else 0.01  # PonderNet's survival must be able to fall to eps in 4 steps
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": halt, "loop_scope": scope, "act_eps": eps})
    aux = check_model(backend, dtype, cfg, *away_from_flips(cfg, dtype, B=3, T=8))
    assert len(np.unique(aux["n_steps"])) >= 2, f"halting is trivial in this case: N = {np.unique(aux['n_steps'])}"


@pytest.mark.parametrize("loops", [1, 2, 6])
@pytest.mark.parametrize("halt", HALT_MODES)
@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64", "float32")))
def test_equivalence_loops_override(backend, dtype, halt, loops):
    """forward(tokens, targets, loops=k) of a max_loops=4 model (--random-loops training, test-time depth) is the
    reference with max_loops=k, below and beyond the configured depth: values, aux and every gradient."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": halt})
    case = away_from_flips(cfg.replace(max_loops=loops), dtype)
    aux = check_model(backend, dtype, cfg, *case, loops=loops)
    assert aux["weights"].shape[-1] == loops


@pytest.mark.parametrize("halt", HALT_MODES)
@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64", "float32")))
def test_equivalence_per_call_overrides(backend, dtype, halt, monkeypatch):
    """forward(tokens, targets, overrides={"min_loops": m, "halt_penalty": p}) of a model built with min_loops=1
    (gpu.train's depth and halt-penalty warm-ups) is the reference with cfg.replace(min_loops=m, halt_penalty=p):
    values, aux and every gradient; the model's own config is untouched afterwards."""
    import functools
    over = dict(min_loops=3, halt_penalty=0.02)
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": halt, "act_eps": 0.3})
    case = away_from_flips(cfg.replace(**over), dtype, B=3, T=8)
    reference_fb = R.forward_backward  # check_model's reference leg, run with the overridden config:
    monkeypatch.setattr(R, "forward_backward", lambda p, x, y, c: reference_fb(p, x, y, c.replace(**over)))
    monkeypatch.setattr(LoopedTransformer, "forward", functools.partialmethod(LoopedTransformer.forward,
                                                                              overrides=over))
    aux = check_model(backend, dtype, cfg, *case)
    if RH.get_rule(halt).adaptive:
        assert aux["n_steps"].min() >= 3  # the override took effect: nobody halts before step 3
    model = LoopedTransformer(cfg)
    model(torch.from_numpy(case[1]), torch.from_numpy(case[2]))
    assert model.cfg is cfg and all(g.cfg is cfg for g in model.loop)
    with pytest.raises(ValueError, match="may override only"):
        model(torch.from_numpy(case[1]), overrides=dict(d_model=16))


# ----------------------------------------------------------------------------- training steps
# EPS: Adam moves a weight by lr * m / (sqrt(v) + eps); a gradient that is zero in exact arithmetic but computed as
# rounding noise (~1e-17, e.g. the key weights of linear attention on some 2-token batches) moves it by lr * noise /
# eps. With eps = 1e-8 that is 1e-11 (lr / eps = 1e6 times the noise) and the two backends' noise differ; with 1e-4
# it is 1e-15, below what the comparison resolves. The optimizer's maths under test is the same either way.
STEPS, LR, BETAS, EPS, WD, CLIP = 10, 1e-2, (0.9, 0.95), 1e-4, 0.1, 1.0


def train_reference(params, batches, cfg, dtype, xp=np):
    """STEPS of reference AdamW with clip_grad_norm: (losses, grad norms, final params); assumes no flips."""
    p = {k: xp.asarray(v.astype(storage_dtype(dtype) if xp is not np else np.float64)) for k, v in params.items()}
    opt = optim.AdamW(p, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    losses, norms = [], []
    for tokens, targets in batches:
        loss, grads, _, aux = R.forward_backward(p, xp.asarray(tokens), xp.asarray(targets), cfg)
        assume(aux_margin(aux) > TOLERANCES[dtype]["flip_margin"])
        norms.append(optim.clip_grad_norm(grads, CLIP))
        opt.step(grads)
        losses.append(float(loss))
    return losses, norms, {k: to_numpy(v) for k, v in p.items()}


def train_torch(model, batches, device, backend, dtype):
    """STEPS of torch.optim.AdamW (decay on ndim >= 2 only) with clip_grad_norm_: (losses, grad norms, n_steps)."""
    params = list(model.parameters())
    opt = torch.optim.AdamW([dict(params=[p for p in params if p.ndim >= 2], weight_decay=WD),
                             dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)],
                            lr=LR, betas=BETAS, eps=EPS)
    losses, norms, depths = [], [], []
    for tokens, targets in batches:
        with autocast(backend, dtype):
            _, loss, aux = model(torch.from_numpy(tokens).to(device), torch.from_numpy(targets).to(device))
        opt.zero_grad(set_to_none=False)  # every parameter steps, as in the reference (zero grad where unused)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, CLIP)))
        opt.step()
        losses.append(float(loss.detach()))
        depths.append(to_numpy(aux["n_steps"]))
    return losses, norms, depths


# float64 only: Adam's m / sqrt(v) turns rounding noise in near-zero gradient entries into full-size (+-lr) updates,
# so 10-step float32 trajectories drift apart chaotically; the reference's own float32 run drifts ~3e-4 from its
# float64 run on some draws. float64 pins the optimizer's math (param groups, decay, betas, eps, clipping) exactly.
@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64",)))
@settings(max_examples=max(5, settings.default.max_examples // 3))
@given(data=st.data())
def test_equivalence_adamw_losses(backend, dtype, data):
    """The losses (and clipped gradient norms, and final weights) of 10 AdamW steps: reference.optim.AdamW +
    clip_grad_norm vs torch.optim.AdamW + clip_grad_norm_ (or the reference optimizer on CuPy)."""
    cfg, params, tokens, _ = data.draw(model_cases(dtype))
    seed = data.draw(st.integers(0, 2 ** 20))
    batches = [random_batch(cfg, seed + i, *tokens.shape) for i in range(STEPS)]
    params = round_to(params, dtype)
    losses, norms, final = train_reference(params, batches, cfg, dtype)
    if backend == "cupy":
        import cupy
        a_losses, a_norms, a_final = train_reference(params, batches, cfg, dtype, cupy)
    else:
        device = torch_device(backend)
        model = from_reference(params, cfg, device=device, dtype=TORCH_DTYPES[dtype])
        a_losses, a_norms, _ = train_torch(model, batches, device, backend, dtype)
        a_final = model.to_reference()
    assert_close(a_losses, losses, dtype, "losses of 10 AdamW steps")
    assert_close(a_norms, norms, dtype, "gradient norms before clipping", grad=True)
    for name in final:
        assert_close(a_final[name], final[name], dtype, f"{name} after 10 steps", grad=True)


@pytest.mark.parametrize("backend,dtype", backend_params(("torch-cpu", "torch-cuda"), ("float64", "float32")))
def test_equivalence_determinism(backend, dtype):
    """Same seed, same bits: two training runs from LoopedTransformer(cfg, seed) give bit-identical losses."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": "act", "input_injection": "concat"})
    batches = [random_batch(cfg, i, 3, 8) for i in range(STEPS)]
    device = torch_device(backend)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # needed on CUDA (atomics in embedding/attention backward)
    try:
        runs = [train_torch(LoopedTransformer(cfg, seed=3).to(device=device, dtype=TORCH_DTYPES[dtype]),
                            batches, device, backend, dtype) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(was)
    (losses_a, norms_a, depths_a), (losses_b, norms_b, depths_b) = runs
    assert losses_a == losses_b and norms_a == norms_b
    assert all(np.array_equal(a, b) for a, b in zip(depths_a, depths_b))


# ----------------------------------------------------------------------------- weights
@settings(max_examples=max(5, settings.default.max_examples // 3))
@given(cfg=configs())
def test_equivalence_parameter_names(cfg):
    """state_dict names and shapes are reference.param_shapes(cfg); the seeded init is reference.init_params;
    from_reference -> to_reference is exact."""
    model = LoopedTransformer(cfg, seed=5)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == R.param_shapes(cfg)
    init = R.init_params(cfg, 5, dtype="float32")
    out = model.to_reference()
    assert all(np.array_equal(out[k], init[k]) and out[k].dtype == np.float32 for k in init)
    p64 = perturbed_params(cfg, 1)
    back = from_reference(p64, cfg).to_reference()
    assert all(np.array_equal(back[k], p64[k]) and back[k].dtype == np.float64 for k in p64)


def test_equivalence_weight_files(tmp_path):
    """One safetensors format: torch writes what the reference reads and back; mismatches are listed."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": "pondernet", "rope": False, "tie_embeddings": False})
    params = perturbed_params(cfg, 0)
    save(from_reference(params, cfg), tmp_path / "torch.safetensors")
    loaded, cfg_loaded = weights.load_params(tmp_path / "torch.safetensors")
    assert cfg_loaded == cfg and all(np.array_equal(loaded[k], params[k]) for k in params)
    weights.save_params(tmp_path / "ref.safetensors", params, cfg)
    model = load(tmp_path / "ref.safetensors")
    assert model.cfg == cfg and all(np.array_equal(v, params[k]) for k, v in model.to_reference().items())
    bad = dict(params, extra=np.zeros(3), **{"loop.0.step_scale": np.zeros(5)})
    del bad["embed.weight"]
    with pytest.raises(ValueError) as err:
        from_reference(bad, cfg)
    for part in ("missing embed.weight", "unexpected extra", "loop.0.step_scale has shape (5,), expected (8,)"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match="unexpected loop.0.halt.weight"):
        load(tmp_path / "ref.safetensors", cfg.replace(halt="fixed"))


# ----------------------------------------------------------------------------- inputs, torch.compile
def _message(fn):
    with pytest.raises(ValueError) as err:
        fn()
    return str(err.value)


@pytest.mark.parametrize("case", ["out-of-vocab", "too-long", "float", "1-D", "all-ignored", "shape-mismatch"])
def test_equivalence_input_errors(case):
    """Bad tokens and targets get the reference's error messages (dtype names differ: numpy vs torch)."""
    cfg = R.LoopConfig(**EDGE_BASE)
    model, params = from_reference(perturbed_params(cfg, 0), cfg), perturbed_params(cfg, 0)
    tokens, targets = random_batch(cfg, 0, 2, 5)
    tokens, targets = {"out-of-vocab": (tokens + 13, targets), "too-long": (np.zeros((1, 9), np.int64), None),
                       "float": (tokens * 1.0, None), "1-D": (tokens[0], None),
                       "all-ignored": (tokens, targets * 0 - 1), "shape-mismatch": (tokens, targets[:, :3])}[case]
    t_tokens = torch.as_tensor(tokens)
    t_targets = None if targets is None else torch.as_tensor(targets)
    got = _message(lambda: model(t_tokens, t_targets))
    want = _message(lambda: R.forward(params, tokens, cfg) if targets is None
                    else R.forward_backward(params, tokens, targets, cfg))
    assert got.split("got dtype")[0] == want.split("got dtype")[0]


@pytest.mark.parametrize("halt", HALT_MODES)
def test_equivalence_compiled(halt):
    """torch.compile(fullgraph=True) traces every mode without a graph break and computes the same forward,
    N(t) and gradients (backend='eager': dynamo's graph capture without code generation, fast on a CPU)."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": halt, "input_injection": "concat"})
    params, tokens, targets = away_from_flips(cfg, "float64")
    assert_compiled_matches_eager(params, cfg, tokens, targets)


@pytest.mark.parametrize("backprop_loops", [1, 2])
@pytest.mark.parametrize("halt", HALT_MODES)
@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64",)))
def test_equivalence_truncated_backprop(backend, dtype, halt, backprop_loops):
    """backprop_loops = b: gradients through the last b of K = 4 steps only; the reference's hand-written truncated
    backward vs autograd through detached states. The gradients really differ from the untruncated ones."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": halt, "backprop_loops": backprop_loops,
                          "act_eps": 0.3 if halt == "pondernet" else 0.01, "input_injection": "add"})
    params, tokens, targets = away_from_flips(cfg, dtype, B=3, T=8)
    check_model(backend, dtype, cfg, params, tokens, targets)
    _, full = R.loss_and_grads(params, tokens, targets, cfg.replace(backprop_loops=0))
    _, truncated = R.loss_and_grads(params, tokens, targets, cfg)
    assert not np.allclose(full["core.0.attn.qkv.weight"], truncated["core.0.attn.qkv.weight"])
    np.testing.assert_allclose(truncated["coda.0.mlp.fc.weight"], full["coda.0.mlp.fc.weight"], rtol=1e-12)  # forward unchanged
