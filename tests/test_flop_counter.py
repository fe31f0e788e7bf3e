"""FLOP accounting, exactly, against torch's own counter (issue 10, "test gaps").

torch.utils.flop_counter.FlopCounterMode counts matmuls (mm/addmm/bmm/baddbmm: 2 m k n) and fused attention kernels;
reference.accounting counts exactly the matmuls too (nanoGPT/PaLM convention: linears 2 * in * out per token, the
attention scores and the weighted sum 2 T D each per token over the full context, the LM head 2 D V), so on the
torch model (float64, CPU) the two must agree to the FLOP:
  - attention: on the CPU, scaled_dot_product_attention's default kernel (_scaled_dot_product_flash_attention_for_cpu)
    has no formula in FlopCounterMode and counts 0, so the forward runs under sdpa_kernel(MATH), whose q k^T and
    att v are two counted bmm's over the full (T, T) scores (the causal mask is added, not skipped: no discount,
    as in the accounting). The linears alone (aten.mm) are also compared with the accounting minus its attention
    term on the default kernel.
  - the halting unit's w . norm(s) (act, pondernet) is a multiply-and-sum, not a matmul: the counter does not see
    it, so for those modes the counter equals the accounting minus n_groups * 2 D per loop step and token.
  - every loop step runs for every token here (halt='fixed', or a halting bias so negative that no token halts
    before max_loops), so the realized mean depth is max_loops.
  - training=True is 3x the forward: the counter over loss.backward() sees exactly 2x the forward's matmuls.
Norms, activations, softmax, the step update s + m * gamma * r and the embedding lookup are not counted by either.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import reference as R
from gpu.model import from_reference
from reference import accounting

CONFIGS = {
    "stack-none-tied": dict(n_prelude=1, n_layer=2, n_coda=1, loop_scope="stack", input_injection="none",
                            tie_embeddings=True),
    "layer-concat-untied": dict(n_prelude=0, n_layer=3, n_coda=2, loop_scope="layer", input_injection="concat",
                                tie_embeddings=False),
    "stack-concat-tied-no-coda": dict(n_prelude=2, n_layer=1, n_coda=0, loop_scope="stack", input_injection="concat",
                                      tie_embeddings=True),
    "layer-add-untied-no-rope": dict(n_prelude=1, n_layer=2, n_coda=1, loop_scope="layer", input_injection="add",
                                     tie_embeddings=False, rope=False, mlp_ratio=2),
    "stack-concat-untied-K1": dict(n_prelude=1, n_layer=2, n_coda=1, loop_scope="stack", input_injection="concat",
                                   tie_embeddings=False, max_loops=1),
}


def _config(name, halt="fixed", **overrides):
    base = dict(vocab_size=11, block_size=6, d_model=8, n_head=2, max_loops=3, halt=halt, halt_bias_init=-30.0)
    return R.LoopConfig(**{**base, **CONFIGS[name], **overrides})


def _count(fn, math_attention=True):
    """(total FLOPs, per-op counts {op name: FLOPs}) of fn() under FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    if math_attention:
        with sdpa_kernel([SDPBackend.MATH]), counter:
            out = fn()
    else:
        with counter:
            out = fn()
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), per_op, out


def _model_and_tokens(cfg, B=2, T=None, seed=0):
    T = T or cfg.block_size
    model = from_reference(R.init_params(cfg, seed, "float64"), cfg)
    tokens = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)))
    return model, tokens


def _halting_unit_flops(cfg):
    """The halting unit's multiply-and-sum per token over the whole forward (not a matmul, so not counted)."""
    return cfg.n_groups * cfg.max_loops * 2 * cfg.d_model if cfg.halt in ("act", "pondernet") else 0


def _attention_flops(cfg, T):
    """The accounting's attention-score term per token: 4 T D per block application."""
    blocks_run = cfg.n_prelude + cfg.n_coda + cfg.n_layer * cfg.max_loops
    return blocks_run * 4 * T * cfg.d_model


def _assert_every_step_ran(aux, cfg):
    assert bool((aux["n_steps"] == cfg.max_loops).all()), "some token halted early: the depth is not max_loops"


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_flops_equal_torch_counter(name):
    cfg = _config(name)
    model, tokens = _model_and_tokens(cfg)
    B, T = tokens.shape
    with torch.no_grad():
        total, per_op, (_, _, aux) = _count(lambda: model(tokens))
    _assert_every_step_ran(aux, cfg)
    expected = accounting.flops_per_token(cfg, seq_len=T, training=False) * B * T
    assert float(total) == expected, f"counter {total} != accounting {expected} ({per_op})"
    assert per_op.get("aten.bmm", 0) == _attention_flops(cfg, T) * B * T  # the attention term on its own


@pytest.mark.parametrize("name", ["stack-none-tied", "layer-concat-untied"])
def test_forward_flops_shorter_context(name):
    """T < block_size: the attention term follows seq_len (the accounting's seq_len argument)."""
    cfg = _config(name)
    model, tokens = _model_and_tokens(cfg, B=3, T=4)
    with torch.no_grad():
        total, per_op, (_, _, aux) = _count(lambda: model(tokens))
    _assert_every_step_ran(aux, cfg)
    assert float(total) == accounting.flops_per_token(cfg, seq_len=4, training=False) * 3 * 4, per_op


@pytest.mark.parametrize("name", ["stack-none-tied", "layer-concat-untied"])
def test_linear_flops_on_the_default_attention_kernel(name):
    """Whatever kernel runs attention, the linears (aten.mm) are the accounting minus its attention term."""
    cfg = _config(name)
    model, tokens = _model_and_tokens(cfg)
    B, T = tokens.shape
    with torch.no_grad():
        _, per_op, _ = _count(lambda: model(tokens), math_attention=False)
    expected = (accounting.flops_per_token(cfg, seq_len=T, training=False) - _attention_flops(cfg, T)) * B * T
    assert float(per_op["aten.mm"]) == expected, per_op


@pytest.mark.parametrize("halt", ["act", "pondernet"])
@pytest.mark.parametrize("name", ["stack-none-tied", "layer-concat-untied", "layer-add-untied-no-rope"])
def test_forward_flops_with_halting_unit(name, halt):
    """act / pondernet with no token halting early: the counter misses only the halting unit's 2 D per step."""
    cfg = _config(name, halt=halt, act_eps=0.01)
    model, tokens = _model_and_tokens(cfg)
    B, T = tokens.shape
    with torch.no_grad():
        total, per_op, (_, _, aux) = _count(lambda: model(tokens))
    _assert_every_step_ran(aux, cfg)
    expected = (accounting.flops_per_token(cfg, mean_depth=cfg.max_loops, seq_len=T, training=False)
                - _halting_unit_flops(cfg)) * B * T
    assert float(total) == expected, per_op
    assert accounting.loop_step_overhead_flops(cfg) - accounting.loop_step_overhead_flops(cfg.replace(halt="fixed")) \
        == 2 * cfg.d_model


@pytest.mark.parametrize("halt", ["fixed", "act"])
@pytest.mark.parametrize("name", ["stack-none-tied", "layer-concat-untied"])
def test_training_flops_are_three_forwards(name, halt):
    """training=True (forward + backward) against the counter over the forward and loss.backward()."""
    cfg = _config(name, halt=halt)
    model, tokens = _model_and_tokens(cfg)
    B, T = tokens.shape
    fwd, _, (_, loss, aux) = _count(lambda: model(tokens, tokens))
    _assert_every_step_ran(aux, cfg)
    bwd, _, _ = _count(loss.backward)
    expected = (accounting.flops_per_token(cfg, seq_len=T, training=True) - 3 * _halting_unit_flops(cfg)) * B * T
    assert float(fwd + bwd) == expected
    assert bwd == 2 * fwd


def test_block_flops_by_hand():
    """block_flops = qkv + proj + fc + fc-proj linears + 4 T D attention, written out for one config."""
    cfg = _config("layer-add-untied-no-rope")  # D = 8, F = 16, T = 6
    D, F, T = 8, 16, 6
    assert accounting.block_flops(cfg) == 2 * 3 * D * D + 2 * D * D + 2 * D * F + 2 * F * D + 2 * T * D + 2 * T * D
    assert accounting.block_flops(cfg, seq_len=3) == accounting.block_flops(cfg) - 4 * 3 * D
