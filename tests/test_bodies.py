"""The block bodies of issue 13: MoE FFN, causal linear attention, gated memory banks, and the loss-term mechanism.

Semantics checked by hand here (the prefix-sum form of linear attention, the top-k of sigma-MoE and its margin, the
running-token mean of the balance term, the memory layout and read), the whole reference model's gradients against
finite differences with each body, and bad input. The op-level cases of the equivalence suite (BODY_OPS) live here
too; tests/test_equivalence.py runs them with the other ops.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reference as R
from cases import batch, random_params, small_config
from gradcheck import HALT_MARGIN, assert_grad_close
from gpu.body import memory as GM
from gpu.body.moe import MoE, moe as torch_moe
from reference import accounting, ops
from reference.body import linear_attention as RL
from reference.body import loss_terms
from reference.body import memory as RM
from reference.body import moe as RMoE


# ----------------------------------------------------------------------------- op cases for the equivalence suite
def _moe_case(E, k, activation):
    def inputs(rng, B, T, D, H):
        return dict(x=rng.normal(size=(B, T, D)), w_sel=rng.normal(0, 0.7, (E, D)), w_fc=rng.normal(0, 0.7, (E, 5, D)),
                    w_proj=rng.normal(0, 0.5, (E, D, 5)))

    def ref(x, w_sel, w_fc, w_proj):
        y, _, _, c = RMoE.moe_forward(x, w_sel, w_fc, w_proj, k, activation)
        return y, lambda dy: dict(zip(("x", "w_sel", "w_fc", "w_proj"), RMoE.moe_backward(dy, c)))

    def margin(inputs):  # the top-k set is a threshold decision: draws closer than the flip margin are excluded
        return float(RMoE.top_k(inputs["x"] @ inputs["w_sel"].T, k)[1].min())

    return inputs, ref, lambda x, w_sel, w_fc, w_proj: torch_moe(x, w_sel, w_fc, w_proj, k, activation)[0], margin


def _balance_case():
    def inputs(rng, B, T, D, H):
        return dict(p_bar=rng.dirichlet(np.ones(D), size=B))  # (B, E) mean selection distributions

    def ref(p_bar):
        return RMoE.term(p_bar), lambda dy: dict(p_bar=dy[:, None] * RMoE.term_backward(p_bar))

    return inputs, ref, MoE.term


def _memory_case(n_banks):
    def inputs(rng, B, T, D, H):
        d = dict(h=rng.normal(0.2, 1.2, (B, T, D)), qw=rng.normal(1, 0.3, D), wg=rng.normal(0, 0.5, (n_banks, D)),
                 bg=rng.normal(0, 1, n_banks))
        for i, S in enumerate((3, 5)[:n_banks]):
            d.update({f"k{i}": rng.normal(size=(S, D)), f"v{i}": rng.normal(size=(S, D)),
                      f"kw{i}": rng.normal(1, 0.3, D), f"w{i}": rng.normal(0, 0.5, (D, D))})
        return d

    def reads(d):
        return [(d[f"k{i}"], d[f"v{i}"], d[f"kw{i}"], None, d[f"w{i}"]) for i in range(n_banks)]

    def ref(**d):
        out, c = RM.memory_forward(d["h"], (d["qw"], None), (d["wg"], d["bg"]), reads(d), "rmsnorm")

        def backward(dy):
            dh, (dqw, _), (dwg, dbg), dreads = RM.memory_backward(dy, c)
            grads = dict(h=dh, qw=dqw, wg=dwg, bg=dbg)
            for i, (dk, dv, dkw, _, dw) in enumerate(dreads):
                grads.update({f"k{i}": dk, f"v{i}": dv, f"kw{i}": dkw, f"w{i}": dw})
            return grads

        return out, backward

    return inputs, ref, lambda **d: GM.memory(d["h"], (d["qw"], None), (d["wg"], d["bg"]), reads(d), "rmsnorm")


BODY_OPS = {"moe-gelu": _moe_case(4, 2, "gelu"), "moe-relu-top1": _moe_case(3, 1, "relu"),
            "moe-all-experts": _moe_case(3, 3, "gelu"), "moe-balance": _balance_case(),
            "memory-one-bank": _memory_case(1), "memory-two-banks": _memory_case(2)}


# ----------------------------------------------------------------------------- linear attention
@pytest.mark.parametrize("use_rope", [False, True])
def test_linear_attention_prefix_sums_equal_the_masked_form(use_rope):
    """The recurrence out_t = phi(q_t)^T S_t / phi(q_t)^T z_t, S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t)
    (rotated features in the numerator with RoPE), run token by token, equals the reference's masked form."""
    rng = np.random.default_rng(3)
    B, T, D, H = 2, 7, 8, 2
    x, w_qkv, w_proj = rng.normal(size=(B, T, D)), rng.normal(0, 0.5, (3 * D, D)), rng.normal(0, 0.5, (D, D))
    rope = ops.rope_tables(T, D // H, 10000.0, np, np.float64) if use_rope else None
    expected, _ = RL.linear_attention_forward(x, w_qkv, w_proj, H, rope)
    q, k, v = RL._heads(x @ w_qkv.T, H)
    (fq, _), (fk, _) = RL.elu1(q), RL.elu1(k)
    rq, rk = (ops.rope_forward(fq, *rope), ops.rope_forward(fk, *rope)) if use_rope else (fq, fk)
    S, z, y = np.zeros((B, H, D // H, D // H)), np.zeros((B, H, D // H)), np.zeros((B, H, T, D // H))
    for t in range(T):
        S += rk[:, :, t, :, None] * v[:, :, t, None, :]
        z += fk[:, :, t]
        y[:, :, t] = np.einsum("bhi,bhij->bhj", rq[:, :, t], S) / np.einsum("bhi,bhi->bh", fq[:, :, t], z)[..., None]
    got = y.transpose(0, 2, 1, 3).reshape(B, T, D) @ w_proj.T
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_linear_attention_is_causal_and_its_features_are_positive():
    rng = np.random.default_rng(0)
    x, w_qkv, w_proj = rng.normal(size=(1, 6, 8)), rng.normal(size=(24, 8)), rng.normal(size=(8, 8))
    out, _ = RL.linear_attention_forward(x, w_qkv, w_proj, 2)
    x2 = x.copy()
    x2[:, 4:] += 5.0
    out2, _ = RL.linear_attention_forward(x2, w_qkv, w_proj, 2)
    np.testing.assert_array_equal(out[:, :4], out2[:, :4])
    phi, dphi = RL.elu1(np.array([-30.0, -1.0, 0.0, 2.0]))
    assert np.all(phi > 0) and np.allclose(phi, [np.exp(-30), np.exp(-1), 1, 3]) and np.allclose(dphi[2:], 1)


# ----------------------------------------------------------------------------- MoE
def test_moe_is_the_sigmoid_weighted_sum_of_the_top_k_experts():
    """Each token's output, by brute force: its k best-scored experts, weighted by sigmoid(score), not renormalised."""
    rng = np.random.default_rng(1)
    E, k, D, Fe = 4, 2, 6, 5
    x, w_sel = rng.normal(size=(2, 3, D)), rng.normal(size=(E, D))
    w_fc, w_proj = rng.normal(size=(E, Fe, D)), rng.normal(size=(E, D, Fe))
    y, p, margin, _ = RMoE.moe_forward(x, w_sel, w_fc, w_proj, k, "relu")
    for b, t in np.ndindex(2, 3):
        z = w_sel @ x[b, t]
        best = np.argsort(z)[::-1][:k]
        want = sum(1 / (1 + np.exp(-z[e])) * w_proj[e] @ np.maximum(w_fc[e] @ x[b, t], 0) for e in best)
        np.testing.assert_allclose(y[b, t], want, rtol=1e-12)
        assert margin[b, t] == pytest.approx(np.sort(z)[::-1][k - 1] - np.sort(z)[::-1][k])
        np.testing.assert_allclose(p[b, t], np.exp(z) / np.exp(z).sum())
    assert np.all(RMoE.top_k(x @ w_sel.T, E)[1] == np.inf), "using every expert is no decision"
    yt = torch_moe(*(torch.from_numpy(a) for a in (x, w_sel, w_fc, w_proj)), k, "relu")[0]
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-12, atol=1e-12)


def test_balance_term_is_the_running_token_mean_per_sequence():
    """loss_terms.forward: u_bar per sequence over the token-steps processed (halted ones masked out), the term
    KL(u_bar || uniform) averaged over sequences and bodies, times the coefficient; backward matches finite
    differences of that value."""
    cfg = R.LoopConfig(ffn="moe", moe_balance=0.3)
    rng = np.random.default_rng(2)
    p1, p2 = rng.dirichlet(np.ones(4), size=(2, 3)), rng.dirichlet(np.ones(4), size=(2, 3))  # (B, T, E)
    mask = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # step 2: tokens (0, 1), (1, 0), (1, 1) have halted
    recs = [loss_terms.Record(p1), loss_terms.Record(p2)]
    calls = [("core.0.mlp", RMoE, recs[0], None), ("core.0.mlp", RMoE, recs[1], mask)]
    values, margin, cache = loss_terms.forward(calls, cfg)
    u0 = (p1[0].sum(0) + p2[0, 0] + p2[0, 2]) / 5
    u1 = (p1[1].sum(0) + p2[1, 2]) / 4
    kl = lambda u: np.sum(u * np.log(u * 4))  # noqa: E731
    assert values["moe_balance"] == pytest.approx(0.3 * (kl(u0) + kl(u1)) / 2, rel=1e-12)
    assert margin is None
    loss_terms.backward(cache)
    assert np.all(recs[1].dstat[1, :2] == 0), "a halted token gets no gradient from the term"
    f = lambda: float(loss_terms.forward(calls, cfg)[0]["moe_balance"])  # noqa: E731
    for rec in recs:
        assert_grad_close(f, rec.stat, rec.dstat, rng, label="balance")
    assert loss_terms.forward(calls, cfg.replace(moe_balance=0.0))[0]["moe_balance"] == 0.0


# ----------------------------------------------------------------------------- memory
def test_memory_layout_local_per_core_block_one_global_bank():
    cfg = small_config(memory="both", memory_local_slots=3, memory_global_slots=5, memory_gate_bias_init=-1.5)
    shapes = R.param_shapes(cfg)
    assert shapes["memory.keys"] == (5, 8) and shapes["memory.values"] == (5, 8)
    for i in range(cfg.n_layer):
        assert shapes[f"core.{i}.mem.local.keys"] == (3, 8) and shapes[f"core.{i}.mem.gate.weight"] == (2, 8)
        assert f"core.{i}.mem.global_proj.weight" in shapes and f"core.{i}.mem.local_proj.weight" in shapes
    assert not [n for n in shapes if n.startswith(("prelude.", "coda.")) and ".mem." in n], "memory is core-only"
    assert np.all(R.init_params(cfg)["core.1.mem.gate.bias"] == -1.5)
    local = set(R.param_shapes(cfg.replace(memory="local")))
    assert "memory.keys" not in local and "core.0.mem.global_proj.weight" not in local
    assert set(R.param_shapes(cfg.replace(memory="global"))) >= {"memory.keys", "core.0.mem.gate.bias"}


def test_memory_read_by_hand_and_shut_gates_give_the_plain_model():
    rng = np.random.default_rng(4)
    h, keys, values = rng.normal(size=(1, 2, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    ones = np.ones(4)
    m, _ = RM.read_forward(ops.norm_forward(h, ones)[0], keys, values, ones, None, "rmsnorm")
    qn = h[0, 1] / np.sqrt(np.mean(h[0, 1] ** 2) + 1e-5)
    kn = keys / np.sqrt(np.mean(keys ** 2, axis=1, keepdims=True) + 1e-5)
    a = np.exp(kn @ qn / 2)
    np.testing.assert_allclose(m[0, 1], (a / a.sum()) @ values, rtol=1e-12)
    cfg = small_config(memory="both")
    params, (tokens, _) = random_params(cfg, 0), batch(cfg, 0)
    plain = {k: v for k, v in params.items() if ".mem." not in k and not k.startswith("memory.")}
    for i in range(cfg.n_layer):
        params[f"core.{i}.mem.gate.bias"][:] = -60.0  # gates ~ 1e-26: the reads vanish
    logits, _ = R.forward(params, tokens, cfg)
    np.testing.assert_allclose(logits, R.forward(plain, tokens, cfg.replace(memory="none"))[0], rtol=1e-12)


# ----------------------------------------------------------------------------- the whole model
BODY_CASES = [dict(ffn="moe", moe_balance=0.5), dict(ffn="moe", n_experts=3, moe_top_k=1, halt="pondernet"),
              dict(attention="linear", loop_scope="layer"), dict(attention="linear", rope=False, halt="exit_gate"),
              dict(memory="both", norm="layernorm"), dict(memory="global", loop_scope="layer", halt="converge"),
              dict(ffn="moe", attention="linear", memory="local", moe_balance=0.2)]


@pytest.mark.parametrize("overrides", BODY_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_model_gradients_with_the_new_bodies_match_finite_differences(overrides):
    """forward_backward (the bodies' hand-written backward and the balance term's) vs finite differences of loss,
    on the first seed whose halting and top-k margins both exceed HALT_MARGIN (the only draws excluded)."""
    cfg = small_config(**overrides)
    for seed in range(50):
        params, (tokens, targets) = random_params(cfg, seed), batch(cfg, seed)
        _, aux = R.forward(params, tokens, cfg)
        if min(aux["halt_margin"].min(), aux["route_margin"].min()) > HALT_MARGIN:
            break
    else:
        raise AssertionError(f"no seed kept halting and routing {HALT_MARGIN} away from their thresholds: {cfg}")
    loss, grads = R.loss_and_grads(params, tokens, targets, cfg)
    total, parts = R.loss(params, tokens, targets, cfg)
    assert loss == total and set(grads) == set(params)
    assert (parts.get("moe_balance", 0.0) > 0) == (cfg.ffn == "moe"), "the MoE adds its balance term"
    rng = np.random.default_rng(0)
    f = lambda: float(R.loss(params, tokens, targets, cfg)[0])  # noqa: E731
    for name, value in params.items():
        assert_grad_close(f, value, grads[name], rng, n_dirs=1, label=name)


def test_flops_of_the_new_bodies():
    base = R.LoopConfig(d_model=16, n_head=4, mlp_ratio=4, block_size=32)
    D, T = 16, 32
    assert accounting.block_flops(base.replace(ffn="moe")) == 8 * D * D + 4 * T * D + 2 * D * 4 + 2 * 4 * D * (4 * D // 2)
    assert accounting.block_flops(base.replace(attention="linear")) == 8 * D * D + 4 * D * 4 + 4 * D + 16 * D * D
    mem = base.replace(memory="both", memory_local_slots=3, memory_global_slots=7)
    extra = 2 * D * 2 + (4 * D * 3 + 2 * D * D) + (4 * D * 7 + 2 * D * D)
    assert accounting.block_flops(mem) == accounting.block_flops(base) + extra
    assert accounting.block_flops(mem, core=False) == accounting.block_flops(base), "no memory outside the core"
    assert accounting.flops_per_token(mem, training=False) == accounting.flops_per_token(base, training=False) \
        + mem.max_loops * mem.n_layer * extra


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fields,match", [
    (dict(ffn="moeut"), r"LoopConfig.ffn='moeut'.*'mlp', 'moe'"),
    (dict(attention="performer"), r"LoopConfig.attention='performer'.*'linear'"),
    (dict(memory="yes"), r"LoopConfig.memory='yes'.*'none', 'local', 'global', 'both'"),
    (dict(ffn="moe", n_experts=2, moe_top_k=3), r"LoopConfig.moe_top_k=3.*\[1, n_experts=2\]"),
    (dict(n_experts=0), r"LoopConfig.n_experts=0.*>= 1"),
    (dict(moe_top_k=0), r"LoopConfig.moe_top_k=0.*>= 1"),
    (dict(moe_expert_size=-1), r"LoopConfig.moe_expert_size=-1.*>= 0"),
    (dict(d_model=2, n_head=1, mlp_ratio=1, n_experts=4, moe_top_k=3), r"LoopConfig.moe_expert_size=0.*is 0"),
    (dict(moe_balance=-0.1), r"LoopConfig.moe_balance=-0.1.*>= 0"),
    (dict(memory="local", memory_local_slots=0), r"LoopConfig.memory_local_slots=0.*>= 1"),
    (dict(memory="global", memory_global_slots=-2), r"LoopConfig.memory_global_slots=-2.*>= 1"),
    (dict(memory_gate_bias_init=float("nan")), r"LoopConfig.memory_gate_bias_init=nan.*finite"),
])
def test_bad_body_config_is_a_value_error_naming_field_value_and_what_is_accepted(fields, match):
    with pytest.raises(ValueError, match=match):
        R.LoopConfig(**fields)
