"""The component architecture (docs/architecture.md): registries twinned across backends, executors and the
attention's subset form equal to the reference, parameters declared with their init, and the layout rules."""
from __future__ import annotations

import ast
import pathlib
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as R
from equivalence_helpers import backend_params
from gpu import body as GB
from gpu import halting as GH
from gpu.executors import EXECUTORS
from gpu.layers import rope_tables
from gpu.model import from_reference
from reference import body as RB
from reference import halting as RH
from reference import ops
from reference.config import HALT_MODES
from reference.params import ParamSpec
from test_equivalence import EDGE_BASE, away_from_flips, check_model

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- registries
def test_every_component_has_its_twin():
    assert set(RH.RULES) == set(GH.RULES) == set(HALT_MODES)
    for name, rule in GH.RULES.items():
        assert isinstance(rule, type(RH.RULES[name])), f"gpu rule {name} must subclass its reference rule"
    assert set(RB.ATTENTIONS) == set(GB.ATTENTIONS)
    assert set(RB.FFNS) == set(GB.FFNS)


def test_unknown_component_names_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match="choose one of"):
        RH.get_rule("nope")
    with pytest.raises(ValueError, match=r"LoopConfig.attention='nope'.*softmax"):
        R.LoopConfig(attention="nope")
    with pytest.raises(ValueError, match=r"LoopConfig.ffn='nope'.*mlp"):
        R.LoopConfig(ffn="nope")


@pytest.mark.parametrize("halt", HALT_MODES)
def test_parameters_are_declared_with_their_init(halt):
    """init_params draws exactly what param_specs declares: constants are constants, normals have their std."""
    cfg = R.LoopConfig(halt=halt, input_injection="concat", norm="layernorm", d_model=32, n_head=2)
    specs, params = R.model.param_specs(cfg), R.init_params(cfg, seed=1, dtype="float64")
    assert list(specs) == list(params)
    for name, spec in specs.items():
        assert isinstance(spec, ParamSpec) and params[name].shape == spec.shape, name
        if spec.init == "constant":
            assert np.all(params[name] == spec.value), name
        elif spec.init == "normal" and params[name].size >= 256:
            assert abs(params[name].std() / spec.value - 1) < 0.2, name
    proj = [n for n in specs if n.endswith("proj.weight")]
    assert proj and all(specs[n].value < cfg.init_std for n in proj), "residual projections start scaled down"


# ----------------------------------------------------------------------------- executors
@pytest.mark.parametrize("executor", sorted(EXECUTORS))
@pytest.mark.parametrize("halt", HALT_MODES)
@pytest.mark.parametrize("backend,dtype", [p for p in backend_params(dtypes=("float64", "float32"))
                                           if "cupy" not in str(p.values)])
def test_equivalence_executor(backend, dtype, halt, executor):
    """Every executor computes the reference's loop: values, N(t), aux and every gradient (one-block loop groups,
    which every executor supports: layer scope)."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": halt, "act_eps": 0.3 if halt == "pondernet" else 0.01,
                          "loop_scope": "layer" if not RH.get_rule(halt).expected_exit_loss else "stack",
                          "n_layer": 2 if not RH.get_rule(halt).expected_exit_loss else 1})
    check_model(backend, dtype, cfg, *away_from_flips(cfg, dtype, B=3, T=8), executor=executor)


AUTO_CASES = {  # config -> the executor 'auto' picks
    "act, one block": (dict(halt="act"), "compact"),
    "fixed depth: nothing to skip": (dict(halt="fixed"), "masked"),
    "two blocks, live": (dict(halt="act", n_layer=2), "masked"),
    "two blocks, frozen": (dict(halt="act", n_layer=2, halted_kv="frozen"), "compact"),
    "moe": (dict(halt="act", ffn="moe", n_experts=4, moe_top_k=2), "masked"),
}


@pytest.mark.parametrize("case", AUTO_CASES)
def test_auto_executor_compacts_where_it_applies(case, monkeypatch):
    """The default executor runs compaction for an adaptive rule on a group it can compact, masked otherwise; a call
    may name its executor, with the same numbers."""
    import gpu.executors.auto as auto
    fields, expected = AUTO_CASES[case]
    cfg = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2, max_loops=3, **fields)
    model = from_reference(R.init_params(cfg, 0, "float64"), cfg)
    calls = []
    for name in ("run_compact", "run_masked"):
        original = getattr(auto, name)
        monkeypatch.setattr(auto, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 17, (2, 8)))
    logits, _, aux = model(tokens)
    assert calls == [f"run_{expected}"]
    masked, _, aux_m = model(tokens, executor="masked")
    assert len(calls) == 1  # a named executor bypasses auto
    torch.testing.assert_close(logits, masked, rtol=1e-12, atol=1e-12)
    assert torch.equal(aux["n_steps"], aux_m["n_steps"])


# ----------------------------------------------------------------------------- attention over a subset
@pytest.mark.parametrize("body", sorted(GB.ATTENTIONS))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), use_rope=st.booleans())
def test_equivalence_attention_subset_and_kv_source(body, seed, use_rope):
    """Every attention body's attend(queries at some positions, keys/values of all positions) gives exactly the rows
    of the reference body's full causal attention at those positions (float64): the hook a compacting executor and
    a KV cache use. Positions differ per batch row, and one case is a single new token against a cache."""
    rng = np.random.default_rng(seed)
    B, T, H = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 3))
    cfg = R.LoopConfig(d_model=4 * H, n_head=H, block_size=8, rope=use_rope, attention=body)
    x = rng.normal(size=(B, T, cfg.d_model))
    w_qkv, w_proj = rng.normal(0, 0.5, (3 * cfg.d_model, cfg.d_model)), rng.normal(0, 0.5, (cfg.d_model,) * 2)
    cs_ref = ops.rope_tables(T, cfg.head_dim, cfg.rope_base, np, np.float64) if use_rope else None
    expected, _ = RB.ATTENTIONS[body].forward({"a.qkv.weight": w_qkv, "a.proj.weight": w_proj}, "a", x, cfg, cs_ref)

    attn = GB.ATTENTIONS[body](cfg).double()
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.from_numpy(w_qkv))
        attn.proj.weight.copy_(torch.from_numpy(w_proj))
    cs = rope_tables(T, cfg.head_dim, cfg.rope_base) if use_rope else None
    xt = torch.from_numpy(x)
    all_pos = torch.arange(T).expand(B, T)
    _, k, v = attn.project(xt, all_pos, cs)
    Tq = int(rng.integers(1, T + 1))
    positions = torch.from_numpy(np.stack([np.sort(rng.choice(T, Tq, replace=False)) for _ in range(B)]))  # (B, Tq)
    x_q = torch.gather(xt, 1, positions[..., None].expand(B, Tq, cfg.d_model))
    got = attn.attend(x_q, positions, k, v, cs).detach().numpy()
    want = np.take_along_axis(expected, positions.numpy()[..., None], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    last = torch.full((B, 1), T - 1)  # decoding: the newest token against the cache of every position
    got_last = attn.attend(xt[:, -1:], last, k, v, cs).detach().numpy()
    np.testing.assert_allclose(got_last, expected[:, -1:], rtol=1e-10, atol=1e-12)
    full = attn(xt, cs).detach().numpy()
    np.testing.assert_allclose(full, expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- layout rules
def _sources(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_code_outside_the_halting_packages_compares_the_halting_mode_to_a_string():
    pattern = re.compile(r"\.halt\s*(==|!=|\bin\b|\bnot in\b)|halt\s*(==|!=)\s*[\"']")
    offenders = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                 for path in _sources("reference", "gpu") if "halting" not in path.parts
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "use reference.halting.get_rule(cfg.halt) and its attributes:\n" + "\n".join(offenders)


def test_reference_imports_nothing_from_gpu():
    for path in _sources("reference"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "gpu" or n.startswith("gpu.") for n in names), f"{path} imports {names}"


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources("reference", "gpu")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these files by concern: {long}"


# ----------------------------------------------------------------------------- the recipe works
class _ReferenceThreshold(RH.HaltingRule):
    """The example of docs/architecture.md: halt at the first step n >= min_loops whose unit output h_n >= 1/2; the
    output is the state at N; the loss charges halt_penalty * mean N (no gradient reaches the unit)."""
    name, uses_unit, threshold_field = "threshold", True, None

    def decide(self, state, k, sig, delta, cfg):
        return state, (sig >= 0.5) & (k >= cfg.min_loops)

    def resolve(self, signals, deltas, cfg):
        from reference.halting.base import before_min, first_true, margin, one_hot, xp_of
        xp, K = xp_of(signals), signals.shape[-1]
        n_steps = first_true(xp, (signals >= 0.5) & ~before_min(xp, K, cfg.min_loops))
        return one_hot(xp, n_steps, K, signals.dtype, margin(xp, signals, 0.5, n_steps, cfg.min_loops))

    def loss_weights(self, cfg):
        return {"ponder_cost": cfg.halt_penalty}


class _TorchThreshold(GH.base.TorchRule, _ReferenceThreshold):
    def decide(self, state, k, sig, delta, cfg):
        return state, (sig.detach() >= 0.5) & (k >= cfg.min_loops)

    def resolve(self, signals, deltas, cfg):
        from gpu.halting.base import before_min, first_true, margin, one_hot
        K = signals.shape[-1]
        n_steps = first_true((signals >= 0.5) & ~before_min(K, cfg.min_loops, signals.device))
        return one_hot(n_steps, K, signals, margin(signals, 0.5, n_steps, cfg.min_loops))


@pytest.mark.parametrize("backend,dtype", backend_params(dtypes=("float64",)))
def test_equivalence_a_new_rule_is_one_class_per_backend_and_a_registry_line(backend, dtype, monkeypatch):
    """docs/architecture.md's recipe, done: register a new rule in both registries and it trains and matches the
    reference (values, N(t), every gradient) with no other file touched."""
    if backend == "cupy":
        pytest.skip("the CuPy leg runs the reference itself")
    monkeypatch.setitem(RH.RULES, "threshold", _ReferenceThreshold())
    monkeypatch.setitem(GH.RULES, "threshold", _TorchThreshold())
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": "threshold", "halt_bias_init": 0.0})
    aux = check_model(backend, dtype, cfg, *away_from_flips(cfg, dtype, B=3, T=8))
    assert len(np.unique(aux["n_steps"])) >= 2, "the new rule's depth should vary in this case"
    assert "loop.0.halt.weight" in R.init_params(cfg), "uses_unit gives the rule its halting unit's parameters"


@pytest.mark.parametrize("overrides, message", [(dict(n_layer=2, loop_scope="stack"), "loop groups of one block"),
                                                 (dict(ffn="moe"), "does not support ffn='moe'")])
def test_compact_executor_refuses_what_it_cannot_do_exactly(overrides, message):
    cfg = R.LoopConfig(**{**EDGE_BASE, "n_layer": 1, **overrides})
    model = from_reference(R.init_params(cfg, dtype="float64"), cfg, executor="compact")
    with pytest.raises(ValueError, match=message):
        model(np.zeros((1, 4), dtype=np.int64))
