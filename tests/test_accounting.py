"""Parameter and FLOP accounting, and the presets' size claims."""
import numpy as np
import pytest

import reference as R
from reference import accounting as A


def test_counts_add_up_to_the_params():
    cfg = R.LoopConfig(rope=False, tie_embeddings=False, input_injection="concat")
    params = R.init_params(cfg, 0)
    c = A.param_counts(cfg)
    assert c["unique"] == sum(v.size for v in params.values())
    assert c["embedding"] == params["embed.weight"].size + params["pos.weight"].size + params["lm_head.weight"].size
    assert c["core"] == sum(v.size for k, v in params.items() if k.startswith(("core.", "loop.")))


def test_effective_params_grow_with_depth_unique_do_not():
    cfg = R.get_preset("looped-100m")
    assert A.effective_params(cfg, 1) == A.param_counts(cfg)["non_embedding"]
    assert A.effective_params(cfg, 4) == A.param_counts(cfg)["non_embedding"] + 3 * A.param_counts(cfg)["core"]


def test_presets_are_what_their_names_say():
    looped, d100, d400 = (R.get_preset(n) for n in ("looped-100m", "dense-100m", "dense-400m"))
    n_looped = A.param_counts(looped)["non_embedding"]
    assert 95e6 < n_looped < 110e6
    # dense-100m: same unique parameters (up to the loop's step scale and halting unit)
    assert abs(A.param_counts(d100)["non_embedding"] - n_looped) / n_looped < 1e-3
    # dense-400m: same training FLOPs per token as looped-100m at full depth, and ~4x... the effective params
    assert A.iso_flop_dense(looped, 4) == d400
    f_looped, f_dense = A.flops_per_token(looped, 4), A.flops_per_token(d400)
    assert abs(f_looped - f_dense) / f_looped < 0.01
    assert 300e6 < A.param_counts(d400)["non_embedding"] < 400e6


def test_flops_scale_with_realized_depth():
    cfg = R.get_preset("looped-100m")
    f1, f2, f4 = (A.flops_per_token(cfg, d) for d in (1, 2, 4))
    np.testing.assert_allclose(f4 - f2, 2 * (f2 - f1))  # linear in depth
    assert A.flops_per_token(cfg, 4, training=True) == 3 * A.flops_per_token(cfg, 4, training=False)
    # 6N rule of thumb plus attention: within 10% for the dense model at T = 1024
    d400 = R.get_preset("dense-400m")
    n = A.param_counts(d400)["non_embedding"] + d400.vocab_size * d400.d_model
    approx = 6 * n + 12 * d400.n_layer * d400.d_model * d400.block_size
    assert abs(A.flops_per_token(d400) - approx) / approx < 0.1
    with pytest.raises(ValueError, match="mean_depth"):
        A.flops_per_token(cfg, 5)


def test_peak_flops_by_device_name():
    assert A.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert A.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert A.peak_flops("NVIDIA H200") == 989e12
    assert A.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert A.peak_flops("some CPU") is None


def test_mfu():
    assert A.mfu(1e9, 1e5, 1e15) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="peak_flops"):
        A.mfu(1.0, 1.0, 0.0)


def test_iso_flop_dense_for_a_shallower_realized_depth():
    cfg = R.get_preset("looped-100m")
    dense = A.iso_flop_dense(cfg, 2.5)  # 1 + 6 * 2.5 + 1 = 17 blocks
    assert dense.n_layer == 17 and dense.max_loops == 1 and dense.halt == "fixed"
