"""halted_kv = "live" | "frozen" (reference/loop.py): what a halted token supplies as keys/values at the blocks after
the first of its loop group. The reference's forward and hand-written backward (finite differences, float64), the
one-block coincidence of the two semantics, and the torch executors against the reference (`equivalence` in ids)."""
import numpy as np
import pytest

import reference as R
from cases import batch, random_params, small_config
from gradcheck import HALT_MARGIN, assert_grad_close
from reference import loop as RLOOP

FD_CASES = {  # several blocks per loop group, ACT so that tokens halt at different steps
    "softmax-2-blocks": dict(n_layer=2, attention="softmax"),
    "linear-3-blocks-add": dict(n_layer=3, attention="linear", input_injection="add", rope=False),
    "gqa-concat-layernorm": dict(n_layer=2, n_head=4, n_kv_head=2, input_injection="concat",
                                 norm="layernorm"),
    "moe-memory": dict(n_layer=2, ffn="moe", n_experts=3, memory="both", memory_local_slots=2,
                       memory_global_slots=3),
}


def frozen_case(cfg, B=2, T=7, max_tries=60):
    """(params, tokens, targets) of the first seed whose halting and top-k decisions lie more than HALT_MARGIN from
    their thresholds under both semantics (the only draws excluded), where some token holds its keys/values
    (N <= K - 2) and the two semantics give different logits (so the case exercises the held keys/values)."""
    for seed in range(max_tries):
        params, (tokens, targets) = random_params(cfg, seed), batch(cfg, seed, B, T)
        (logits, aux), (live, aux_live) = (R.forward(params, tokens, cfg.replace(halted_kv=h)) for h in
                                           ("frozen", "live"))
        margin = min(float(a[k].min()) for a in (aux, aux_live) for k in ("halt_margin", "route_margin"))
        if margin > HALT_MARGIN and aux["n_steps"].min() <= cfg.max_loops - 2 and np.abs(logits - live).max() > 1e-6:
            return params, tokens, targets
    raise AssertionError(f"no seed in {max_tries} gave a frozen case away from flips that differs from live: {cfg}")


def frozen_config(**overrides):
    return small_config(**{"halt": "act", "loop_scope": "stack", "act_eps": 0.01, "halted_kv": "frozen", **overrides})


# ----------------------------------------------------------------------------- the reference
def test_halted_kv_is_validated():
    with pytest.raises(ValueError, match=r"halted_kv='held'.*'live', 'frozen'"):
        R.LoopConfig(halted_kv="held")
    assert R.LoopConfig().halted_kv == "live"


@pytest.mark.parametrize("case", FD_CASES)
def test_frozen_gradients_match_finite_differences(case):
    """The hand-written backward of the held keys/values (they get gradient from every later step reading them)."""
    cfg = frozen_config(**FD_CASES[case])
    params, tokens, targets = frozen_case(cfg)
    loss, grads, _, aux = R.forward_backward(params, tokens, targets, cfg)
    assert len(np.unique(aux["n_steps"])) > 1
    rng = np.random.default_rng(0)
    f = lambda: float(R.loss(params, tokens, targets, cfg)[0])  # noqa: E731
    for name, value in params.items():
        assert_grad_close(f, value, grads[name], rng, n_dirs=1, label=name)


@pytest.mark.parametrize("overrides", [dict(loop_scope="layer", n_layer=2), dict(loop_scope="stack", n_layer=1),
                                       dict(loop_scope="layer", n_layer=3, attention="linear")])
def test_one_block_groups_are_the_same_under_both(overrides):
    """In a group of one block, live and frozen are one semantics: identical values and gradients."""
    cfg = small_config(halt="act", act_eps=0.01, **overrides)
    params, tokens, targets = random_params(cfg, 3), *batch(cfg, 3)
    live = R.forward_backward(params, tokens, targets, cfg)
    frozen = R.forward_backward(params, tokens, targets, cfg.replace(halted_kv="frozen"))
    assert live[3]["n_steps"].min() <= cfg.max_loops - 2, "no token holds keys/values in this case"
    assert live[0] == frozen[0]
    np.testing.assert_array_equal(live[2], frozen[2])
    for name in live[1]:
        np.testing.assert_array_equal(live[1][name], frozen[1][name], err_msg=name)


def test_holding_at_the_first_block_changes_nothing(monkeypatch):
    """Why N + 1: at the first block a halted token's keys/values at every step after N are those of step N + 1
    already (its state is frozen), so holding them there too gives the same values and gradients (to rounding)."""
    cfg = frozen_config(n_layer=2)
    params, tokens, targets = frozen_case(cfg)
    expected = R.forward_backward(params, tokens, targets, cfg)
    monkeypatch.setattr(RLOOP, "HELD_FROM", 0)
    actual = R.forward_backward(params, tokens, targets, cfg)
    np.testing.assert_allclose(actual[2], expected[2], rtol=1e-12, atol=1e-14)
    for name in expected[1]:
        np.testing.assert_allclose(actual[1][name], expected[1][name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_frozen_is_live_while_no_token_holds():
    """halt='fixed' (every token runs every step) and tokens halting only at the last two steps hold nothing."""
    cfg = small_config(halt="fixed", n_layer=3, loop_scope="stack")
    params, tokens, targets = random_params(cfg, 1), *batch(cfg, 1)
    live, frozen = (R.forward_backward(params, tokens, targets, cfg.replace(halted_kv=h)) for h in ("live", "frozen"))
    np.testing.assert_array_equal(live[2], frozen[2])
    for name in live[1]:
        np.testing.assert_array_equal(live[1][name], frozen[1][name], err_msg=name)


# ----------------------------------------------------------------------------- the torch executors
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from equivalence_helpers import (TOLERANCES, assert_close, aux_margin, backend_params, model_cases,  # noqa: E402
                                 perturbed_params, random_batch, round_to, run_model)
from gpu.executors import compact as GC  # noqa: E402
from gpu.model import from_reference  # noqa: E402
from reference.config import HALT_MODES  # noqa: E402
from reference.halting import get_rule  # noqa: E402
from test_equivalence import EDGE_BASE, check_model  # noqa: E402

TORCH = [p for p in backend_params(dtypes=("float64", "float32")) if "cupy" not in str(p.values)]
FROZEN_BASE = {**EDGE_BASE, "loop_scope": "stack", "halted_kv": "frozen", "halt_bias_init": 0.0}
EXEC_CASES = {"2-blocks": dict(n_layer=2), "3-blocks-linear-gqa": dict(n_layer=3, attention="linear", n_head=4,
                                                                        n_kv_head=2, input_injection="add"),
              "2-blocks-concat-memory": dict(n_layer=2, input_injection="concat", memory="local",
                                             memory_local_slots=3)}


def frozen_exec_config(halt, case, **more):
    return R.LoopConfig(**{**FROZEN_BASE, **EXEC_CASES[case], "halt": halt,
                           "act_eps": 0.3 if halt == "pondernet" else 0.01, **more})


def holds(aux, cfg) -> bool:
    """Some token holds keys/values at some step (depth N <= K - 2)."""
    return int(np.min(aux["n_steps"])) <= cfg.max_loops - 2


def holding_case(cfg, dtype, B=3, T=8):
    """(params, tokens, targets) of the first seed away from halting flips at dtype (test_equivalence's rule) where,
    for an adaptive rule, some token holds keys/values."""
    for seed in range(60):
        params, (tokens, targets) = perturbed_params(cfg, seed), random_batch(cfg, seed, B, T)
        _, aux = R.forward(round_to(params, dtype), tokens, cfg)
        if aux_margin(aux) > TOLERANCES[dtype]["flip_margin"] and (holds(aux, cfg) or not get_rule(cfg.halt).adaptive):
            return params, tokens, targets
    raise AssertionError(f"no seed away from flips with a token holding keys/values: {cfg}")


@pytest.mark.parametrize("executor", ["masked", "compact"])
@pytest.mark.parametrize("case", EXEC_CASES)
@pytest.mark.parametrize("halt", HALT_MODES)
@pytest.mark.parametrize("backend,dtype", TORCH)
def test_equivalence_frozen_executors(backend, dtype, halt, case, executor):
    """halted_kv="frozen" with several blocks per group: each executor against the reference (values, N(t), aux,
    every gradient)."""
    cfg = frozen_exec_config(halt, case)
    aux = check_model(backend, dtype, cfg, *holding_case(cfg, dtype), executor=executor)
    assert holds(aux, cfg) or not get_rule(halt).adaptive


@pytest.mark.parametrize("backprop_loops", [1, 2])
@pytest.mark.parametrize("executor", ["masked", "compact"])
@pytest.mark.parametrize("backend,dtype", TORCH)
def test_equivalence_frozen_truncated_backprop(backend, dtype, executor, backprop_loops):
    """Held keys/values of a step that truncated backprop holds constant pass no gradient, in both backends."""
    cfg = frozen_exec_config("act", "2-blocks", backprop_loops=backprop_loops)
    aux = check_model(backend, dtype, cfg, *holding_case(cfg, dtype), executor=executor)
    assert holds(aux, cfg)


@pytest.mark.parametrize("backend,dtype", TORCH)
@settings(max_examples=15)
@given(data=st.data())
def test_equivalence_frozen_drawn(backend, dtype, data):
    """Drawn configs (every knob, every body, one loop group) under halted_kv="frozen": the masked executor, and the
    compact one where it applies (no MoE), against the reference."""
    cfg, params, tokens, targets = data.draw(model_cases(dtype, halted_kv="frozen", loop_scope="stack"))
    check_model(backend, dtype, cfg, params, tokens, targets)
    if cfg.ffn != "moe":
        check_model(backend, dtype, cfg, params, tokens, targets, executor="compact")


@pytest.mark.parametrize("case", EXEC_CASES)
@pytest.mark.parametrize("halt", ["act", "converge", "pondernet"])
def test_equivalence_frozen_compact_equals_masked(halt, case):
    """The compact executor under frozen gives the masked executor's numbers (values, N(t), every gradient)."""
    cfg = frozen_exec_config(halt, case)
    params, tokens, targets = holding_case(cfg, "float64")
    masked, compact = (run_model("torch-cpu", "float64", params, cfg, tokens, targets, executor=ex)
                       for ex in ("masked", "compact"))
    np.testing.assert_array_equal(compact[3]["n_steps"], masked[3]["n_steps"])
    assert_close(compact[0], masked[0], "float64", "loss")
    assert_close(compact[2], masked[2], "float64", "logits")
    scale = max(np.abs(g).max() for g in masked[1].values())
    for name in masked[1]:
        assert_close(compact[1][name], masked[1][name], "float64", name, scale=scale, grad=True)


def test_equivalence_frozen_differs_from_live_in_torch():
    """The field reaches the torch model: with tokens holding, frozen and live give different logits."""
    cfg = frozen_exec_config("act", "2-blocks")
    params, tokens, targets = holding_case(cfg, "float64")
    frozen = run_model("torch-cpu", "float64", params, cfg, tokens, targets)
    live = run_model("torch-cpu", "float64", params, cfg.replace(halted_kv="live"), tokens, targets)
    assert holds(frozen[3], cfg) and np.abs(frozen[2] - live[2]).max() > 1e-8


@pytest.mark.parametrize("executor", ["masked", "compact"])
def test_equivalence_one_block_groups_are_the_same_in_torch(executor):
    """As in the reference: in one-block groups frozen and live give identical values and gradients."""
    cfg = R.LoopConfig(**{**FROZEN_BASE, "loop_scope": "layer", "n_layer": 2, "halt": "act", "act_eps": 0.01})
    params, tokens, targets = holding_case(cfg, "float64")
    frozen, live = (run_model("torch-cpu", "float64", params, cfg.replace(halted_kv=h), tokens, targets,
                              executor=executor) for h in ("frozen", "live"))
    assert holds(frozen[3], cfg) and frozen[0] == live[0]
    np.testing.assert_array_equal(frozen[2], live[2])
    for name in live[1]:
        np.testing.assert_array_equal(frozen[1][name], live[1][name], err_msg=name)


def test_compact_refuses_multi_block_groups_under_live():
    cfg = R.LoopConfig(**{**FROZEN_BASE, "halted_kv": "live"})
    model = from_reference(R.init_params(cfg, dtype="float64"), cfg, executor="compact")
    with pytest.raises(ValueError, match=r"halted_kv='frozen'.*executor='masked'"):
        model(np.zeros((1, 4), dtype=np.int64))


@pytest.mark.parametrize("case", ["2-blocks", "3-blocks-linear-gqa"])
def test_equivalence_frozen_kv_cache_decoding_equals_the_full_forward(case):
    """Decoding through a KV cache under frozen stores the keys/values each site used, so a cached token supplies its
    held ones later on: logits and N(t) of the full forward (float64), which differ from live's here."""
    from test_generate import decode_in_pieces
    cfg = R.LoopConfig(**{**FROZEN_BASE, **EXEC_CASES[case], "block_size": 12, "halt_bias_init": -0.5})
    model = from_reference(R.init_params(cfg, 1, "float64"), cfg)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)))
    full, _, aux = model(tokens)
    live, _, _ = from_reference(R.init_params(cfg, 1, "float64"), cfg.replace(halted_kv="live"))(tokens)
    assert int(aux["n_steps"].min()) <= cfg.max_loops - 2 and (live - full).abs().max() > 1e-8
    logits, depth = decode_in_pieces(model, tokens)
    torch.testing.assert_close(logits, full, rtol=1e-12, atol=1e-12)
    assert torch.equal(depth, aux["n_steps"])


# ----------------------------------------------------------------------------- capacity bucketing
def test_bucket_rows_are_few_and_cover():
    for T in range(1, 70):
        sizes = [GC.bucket_rows(n, T) for n in range(1, T + 1)]
        assert all(n <= r <= T for n, r in zip(range(1, T + 1), sizes))
        assert len(set(sizes)) <= 8, (T, sorted(set(sizes)))
        assert all(r % -(-T // 8) == 0 or r == T for r in sizes)


@pytest.mark.parametrize("case", ["layer-1-block", "frozen-2-blocks"])
def test_equivalence_bucketing_changes_nothing_and_bounds_the_shapes(case, monkeypatch):
    """Padding to a bucket is masked like the rest: the compact executor's numbers with and without bucketing agree
    (float64, values and every gradient), and the gathered row counts R it used are bucket sizes."""
    cfg = R.LoopConfig(**{**EDGE_BASE, "halt": "act", "act_eps": 0.01, "block_size": 24},
                       **(dict(loop_scope="layer") if case == "layer-1-block" else
                          dict(loop_scope="stack", halted_kv="frozen")))
    params, tokens, targets = perturbed_params(cfg, 4), *random_batch(cfg, 4, 3, 24)
    seen, running_rows = [], GC.running_rows

    def recorded(running):  # (most running positions of a row, R used)
        rows, valid = running_rows(running)
        seen.append((int(running.sum(1).max()), rows.shape[1]))
        return rows, valid

    monkeypatch.setattr(GC, "running_rows", recorded)
    bucketed = run_model("torch-cpu", "float64", params, cfg, tokens, targets, executor="compact")
    assert seen and all(R == GC.bucket_rows(n, 24) for n, R in seen), seen
    assert any(R > n for n, R in seen), f"no step padded to a bucket in this case: {seen}"
    monkeypatch.setattr(GC, "bucket_rows", lambda n, T: n)
    exact = run_model("torch-cpu", "float64", params, cfg, tokens, targets, executor="compact")
    np.testing.assert_array_equal(bucketed[3]["n_steps"], exact[3]["n_steps"])
    assert_close(bucketed[2], exact[2], "float64", "logits")
    scale = max(np.abs(g).max() for g in exact[1].values())
    for name in exact[1]:
        assert_close(bucketed[1][name], exact[1][name], "float64", name, scale=scale, grad=True)


def test_equivalence_frozen_compiled(halt="act"):
    """torch.compile(fullgraph=True) traces the frozen masked executor without a graph break (every step takes the
    holding path there) and computes the eager forward, N(t) and gradients (backend='eager', as
    test_equivalence_compiled)."""
    from equivalence_helpers import assert_compiled_matches_eager
    cfg = frozen_exec_config(halt, "2-blocks", input_injection="concat")
    params, tokens, targets = holding_case(cfg, "float64")
    assert_compiled_matches_eager(params, cfg, tokens, targets)
