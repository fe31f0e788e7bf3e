"""The safetensors weight format: round trip, clear errors for mismatched or corrupted files, atomic writes."""
import os

import numpy as np
import pytest

import reference as R
from reference.weights import load_params, save_params


def test_round_trip_keeps_config_and_bits(tmp_path):
    cfg = R.LoopConfig(halt="pondernet", input_injection="concat")
    params = R.init_params(cfg, 3)
    save_params(tmp_path / "w.safetensors", params, cfg)
    loaded, cfg2 = load_params(tmp_path / "w.safetensors")
    assert cfg2 == cfg and set(loaded) == set(params)
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k])
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_mismatched_file_lists_every_problem(tmp_path):
    cfg = R.LoopConfig()
    save_params(tmp_path / "w.safetensors", R.init_params(cfg, 0), cfg)
    other = cfg.replace(n_layer=2, d_model=32)
    with pytest.raises(ValueError) as err:
        load_params(tmp_path / "w.safetensors", other)
    msg = str(err.value)
    assert "missing core.1.attn.qkv.weight" in msg and "embed.weight has shape (256, 64), expected (256, 32)" in msg


def test_corrupted_or_missing_file(tmp_path):
    cfg = R.LoopConfig()
    path = tmp_path / "w.safetensors"
    save_params(path, R.init_params(cfg, 0), cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_params(path)
    with pytest.raises(ValueError, match="no weight file"):
        load_params(tmp_path / "nope.safetensors")


def test_failed_save_leaves_the_old_file(tmp_path):
    cfg = R.LoopConfig()
    path = tmp_path / "w.safetensors"
    save_params(path, R.init_params(cfg, 0), cfg)
    before = path.read_bytes()
    bad = R.init_params(cfg, 1)
    del bad["embed.weight"]
    with pytest.raises(ValueError, match="missing embed.weight"):
        save_params(path, bad, cfg)
    assert path.read_bytes() == before
