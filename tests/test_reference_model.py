"""The whole reference model: gradients vs finite differences in every halting mode and loop scope,
structural properties, and clear errors for bad input."""
import itertools

import numpy as np
import pytest
from hypothesis import given, strategies as st

import reference as R
from cases import batch, case_away_from_flips, random_params, small_config
from gradcheck import assert_grad_close
from reference import halting, ops
from reference.model import AUX_KEYS

MODES = ["fixed", "act", "pondernet", "converge", "exit_gate"]
GRAD_CASES = [
    dict(halt=h, loop_scope=s, input_injection=inj, norm=norm, rope=(norm == "rmsnorm"), tie_embeddings=(inj != "add"),
         min_loops=1 + (inj == "concat"))
    for (h, s, inj), norm in zip(itertools.product(MODES, ["stack", "layer"], ["none", "add", "concat"]),
                                 itertools.cycle(["rmsnorm", "layernorm"]))
    if not (h == "exit_gate" and s == "layer")  # the exit gate needs one loop group (each exit is a model output)
]


@pytest.mark.parametrize("overrides", GRAD_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_model_gradients_match_finite_differences(overrides):
    cfg = small_config(**overrides)
    params, tokens, targets = case_away_from_flips(cfg)
    loss, grads, _, aux = R.forward_backward(params, tokens, targets, cfg)
    assert set(grads) == set(params)
    if cfg.halt in ("act", "converge"):  # the check is only meaningful if tokens halt at different steps
        assert len(np.unique(aux["n_steps"])) > 1, "halting is trivial in this case: pick other settings"
    rng = np.random.default_rng(0)
    f = lambda: float(R.loss(params, tokens, targets, cfg)[0])
    for name, value in params.items():
        assert_grad_close(f, value, grads[name], rng, n_dirs=1, label=name)


def test_loss_and_grads_matches_loss():
    cfg = small_config()
    params, (tokens, targets) = random_params(cfg, 0), batch(cfg, 0)
    loss, grads = R.loss_and_grads(params, tokens, targets, cfg)
    total, parts = R.loss(params, tokens, targets, cfg)
    assert loss == total
    expected = parts["ce"] + cfg.halt_penalty * parts["aux"]["ponder_cost"].mean()
    assert abs(loss - expected) < 1e-12


@pytest.mark.parametrize("halt", MODES)
@pytest.mark.parametrize("scope", ["stack", "layer"])
def test_aux_shapes_and_consistency(halt, scope):
    if R.halting.get_rule(halt).expected_exit_loss and scope == "layer":
        with pytest.raises(ValueError, match="one loop group"):  # each exit step is a whole model output
            small_config(halt=halt, loop_scope=scope)
        return
    cfg = small_config(halt=halt, loop_scope=scope, min_loops=2)
    params, (tokens, _) = random_params(cfg, 1), batch(cfg, 1, B=3, T=5)
    logits, aux = R.forward(params, tokens, cfg)
    B, T, G, K = 3, 5, cfg.n_groups, cfg.max_loops
    assert logits.shape == (B, T, cfg.vocab_size)
    assert set(aux) == set(AUX_KEYS)
    for key in ("n_steps", "remainder", "ponder_cost", "kl", "halt_margin"):
        assert aux[key].shape == (B, T, G), key
    for key in ("weights", "halt_probs", "deltas"):
        assert aux[key].shape == (B, T, G, K), key
    n = aux["n_steps"]
    assert n.min() >= cfg.min_loops and n.max() <= K
    np.testing.assert_allclose(aux["weights"].sum(-1), 1.0, rtol=1e-12)
    # the online decision inside the loop equals the pure halting rule on the recorded signals
    rule = halting.get_rule(halt).resolve(aux["halt_probs"], aux["deltas"], cfg)
    np.testing.assert_array_equal(rule.n_steps, n)
    # a halted token's state is frozen: it changes no more after step N
    after = np.arange(1, K + 1) > n[..., None]
    assert np.all(aux["deltas"][after] == 0)
    assert np.all(aux["deltas"][~after] > 0)


def test_all_tokens_halting_early_skip_the_remaining_steps():
    """With a halting bias of +20 every token halts at min_loops; the result must not depend on the skipped steps."""
    cfg = small_config(halt="act", halt_bias_init=20.0, min_loops=2)
    params, (tokens, _) = random_params(cfg, 0), batch(cfg, 0)
    logits, aux = R.forward(params, tokens, cfg)
    assert np.all(aux["n_steps"] == 2)
    same, _ = R.forward(params, tokens, cfg.replace(max_loops=2))
    np.testing.assert_allclose(logits, same, rtol=1e-12)


@given(seed=st.integers(0, 10_000), halt=st.sampled_from(MODES), scope=st.sampled_from(["stack", "layer"]),
       T=st.integers(2, 8), cut=st.integers(1, 7))
def test_model_is_causal(seed, halt, scope, T, cut):
    """Logits, and every halting decision, at position t depend on tokens <= t only."""
    cut = min(cut, T - 1)
    if R.halting.get_rule(halt).expected_exit_loss:
        scope = "stack"  # one loop group (each exit step is a whole model output)
    cfg = small_config(halt=halt, loop_scope=scope)
    params, (tokens, _) = random_params(cfg, seed), batch(cfg, seed, B=1, T=T)
    other = tokens.copy()
    other[:, cut:] = (other[:, cut:] + 1) % cfg.vocab_size
    la, aux_a = R.forward(params, tokens, cfg)
    lb, aux_b = R.forward(params, other, cfg)
    np.testing.assert_allclose(la[:, :cut], lb[:, :cut], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(aux_a["n_steps"][:, :cut], aux_b["n_steps"][:, :cut])


config_strategy = st.builds(
    small_config, d_model=st.sampled_from([8, 12, 16]), n_head=st.sampled_from([1, 2]),
    n_prelude=st.integers(0, 2), n_layer=st.integers(1, 3), n_coda=st.integers(0, 2),
    loop_scope=st.sampled_from(["stack", "layer"]), halt=st.sampled_from(MODES),
    input_injection=st.sampled_from(["none", "add", "concat"]), norm=st.sampled_from(["rmsnorm", "layernorm"]),
    rope=st.booleans(), tie_embeddings=st.booleans())


@given(cfg=config_strategy, k1=st.integers(1, 8), k2=st.integers(1, 8))
def test_params_independent_of_max_loops(cfg, k1, k2):
    a, b = R.param_shapes(cfg.replace(max_loops=k1)), R.param_shapes(cfg.replace(max_loops=k2))
    assert a == b


def plain_transformer(params, tokens, cfg):
    """A plain pre-norm transformer over the same unique layers, written from the ops alone."""
    T = tokens.shape[1]
    rope = ops.rope_tables(T, cfg.head_dim, cfg.rope_base, np, np.float64) if cfg.rope else None
    x = params["embed.weight"][tokens]
    if not cfg.rope:
        x = x + params["pos.weight"][:T]
    names = ([f"prelude.{i}" for i in range(cfg.n_prelude)] + [f"core.{i}" for i in range(cfg.n_layer)]
             + [f"coda.{i}" for i in range(cfg.n_coda)])
    for n in names:
        norm = lambda y, which: ops.norm_forward(y, params[f"{n}.{which}.weight"], params.get(f"{n}.{which}.bias"),
                                                 cfg.norm)[0]
        x = x + ops.attention_forward(norm(x, "attn_norm"), params[f"{n}.attn.qkv.weight"],
                                      params[f"{n}.attn.proj.weight"], cfg.n_head, rope)[0]
        x = x + ops.mlp_forward(norm(x, "mlp_norm"), params[f"{n}.mlp.fc.weight"], params[f"{n}.mlp.proj.weight"],
                                cfg.activation)[0]
    x = ops.norm_forward(x, params["norm_f.weight"], params.get("norm_f.bias"), cfg.norm)[0]
    head = params["embed.weight"] if cfg.tie_embeddings else params["lm_head.weight"]
    return x @ head.T


@given(cfg=config_strategy, seed=st.integers(0, 1000))
def test_one_fixed_loop_is_a_plain_transformer(cfg, seed):
    cfg = cfg.replace(max_loops=1, halt="fixed", input_injection="none")
    params = random_params(cfg, seed)
    for g in range(cfg.n_groups):
        params[f"loop.{g}.step_scale"][:] = 1.0
    tokens, _ = batch(cfg, seed, B=2, T=6)
    logits, _ = R.forward(params, tokens, cfg)
    np.testing.assert_allclose(logits, plain_transformer(params, tokens, cfg), rtol=1e-10, atol=1e-12)


def test_float32_follows_dtype():
    cfg = small_config()
    params, (tokens, targets) = R.init_params(cfg, 0, "float32"), batch(cfg, 0)
    logits, aux = R.forward(params, tokens, cfg)
    loss, grads = R.loss_and_grads(params, tokens, targets, cfg)
    assert logits.dtype == np.float32 and loss.dtype == np.float32
    assert [n for n, g in grads.items() if g.dtype != np.float32] == []
    assert [k for k, v in aux.items() if v.dtype.kind == "f" and v.dtype != np.float32] == []


# ----------------------------------------------------------------------------- bad input
def test_bad_tokens_get_clear_errors():
    cfg = small_config()
    params = R.init_params(cfg, 0)
    with pytest.raises(ValueError, match=r"outside \[0, vocab_size=13\)"):
        R.forward(params, np.array([[1, 13]]), cfg)
    with pytest.raises(ValueError, match="outside"):
        R.forward(params, np.array([[-1, 2]]), cfg)
    with pytest.raises(ValueError, match="block_size=8"):
        R.forward(params, np.zeros((1, 9), dtype=int), cfg)
    with pytest.raises(ValueError, match="2-D integer array"):
        R.forward(params, np.zeros(5, dtype=int), cfg)
    with pytest.raises(ValueError, match="integer token ids"):
        R.forward(params, np.zeros((1, 5)), cfg)
    with pytest.raises(ValueError, match="targets"):
        R.loss_and_grads(params, np.zeros((1, 5), dtype=int), np.full((1, 5), 99), cfg)
    with pytest.raises(ValueError, match="targets shape"):
        R.loss(params, np.zeros((2, 5), dtype=int), np.zeros((1, 5), dtype=int), cfg)
    with pytest.raises(ValueError, match="empty batch"):
        R.forward(params, np.zeros((0, 4), dtype=int), cfg)


def test_bad_params_list_every_mismatch():
    cfg = small_config()
    params = R.init_params(cfg, 0)
    del params["core.0.attn.qkv.weight"]
    params["core.1.mlp.fc.weight"] = np.zeros((3, 3), dtype=np.float32)
    params["extra.weight"] = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError) as err:
        R.forward(params, np.zeros((1, 3), dtype=int), cfg)
    msg = str(err.value)
    assert "missing core.0.attn.qkv.weight" in msg and "unexpected extra.weight" in msg
    assert "core.1.mlp.fc.weight has shape (3, 3), expected (32, 8)" in msg


@pytest.mark.parametrize("field,value,fragment", [
    ("max_loops", 0, "max_loops=0"), ("min_loops", 5, "min_loops=5"), ("halt", "sometimes", "halt='sometimes'"),
    ("loop_scope", "block", "one of ('stack', 'layer')"), ("n_head", 3, "a divisor of d_model=8"),
    ("act_eps", 1.5, "(0, 1)"), ("d_model", 8.0, "an int"), ("rope", 1, "True or False"),
    ("input_injection", "mul", "input_injection"), ("pondernet_prior", 0.0, "pondernet_prior"),
    ("halt_penalty", -1.0, "halt_penalty"), ("n_prelude", -1, "n_prelude"),
])
def test_bad_config_names_field_value_and_accepted(field, value, fragment):
    with pytest.raises(ValueError, match="LoopConfig") as err:
        small_config(**{field: value})
    assert fragment in str(err.value) and field in str(err.value)


def test_presets_and_unknown_names():
    assert set(R.PRESETS) >= {"tiny", "looped-100m", "dense-100m", "dense-400m"}
    assert R.get_preset("tiny", max_loops=6).max_loops == 6
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        R.get_preset("huge")
    with pytest.raises(ValueError, match="unknown LoopConfig field"):
        R.get_preset("tiny", n_layers=3)
    cfg = R.get_preset("looped-100m")
    assert R.LoopConfig.from_dict(cfg.to_dict()) == cfg
