"""gpu.convert (issue 14, items 2 and 3): HF Llama checkpoints in and out with equal logits, and retrofitting a dense
model into a looped one that reproduces it at one loop. Random-weight models built here with `transformers` (no
hub); skipped, with the reason printed, where transformers is not installed."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

import reference as R
from gpu.convert import (config_from_hf, from_hf, from_hf_params, init_config, load_init, parse_layers, read_source,
                         retrofit, to_hf)
from gpu.convert.__main__ import main as convert_main
from gpu.layers import rope, rope_tables
from gpu.model import from_reference, load
from reference.config import dense_variant

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[eval]')")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

V, T = 37, 10


def llama(n_kv=4, tie=False, layers=3, seed=0, **kw):
    """A random LlamaForCausalLM (weights N(0, 0.3^2), so every layer matters), eval mode, float32."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=40, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=n_kv, tie_word_embeddings=tie, rope_theta=500.0,
                      max_position_embeddings=32, rms_norm_eps=1e-5 if tie else 1e-6, **kw)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def tokens(seed=1, B=2):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, V, (B, T)))


def hf_logits(model, x):
    with torch.no_grad():
        return model(x).logits.float().numpy()


def ours(model, x, **kw):
    with torch.no_grad():
        return model(x, **kw)[0].float().numpy()


F32 = dict(rtol=1e-5, atol=2e-6)  # float32 rounding of logits of size ~1


# ----------------------------------------------------------------------------- conventions
def test_rope_is_hf_rotate_half():
    """HF rotates each head by q cos + rotate_half(q) sin over cat(freqs, freqs): with the same angles that is
    gpu.layers.rope (= reference.ops.rope_forward) to float64 rounding; HF's own tables (inv_freq in float32)
    agree to float32 rounding."""
    hd, base = 8, 500.0
    x = torch.randn(2, 3, T, hd, dtype=torch.float64)
    cos, sin = rope_tables(T, hd, base)
    hf_cos, hf_sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    q, _ = modeling_llama.apply_rotary_pos_emb(x, x, hf_cos[None], hf_sin[None])
    torch.testing.assert_close(q, rope(x, cos, sin), rtol=1e-15, atol=1e-15)
    emb = modeling_llama.LlamaRotaryEmbedding(LlamaConfig(hidden_size=4 * hd, num_attention_heads=4, rope_theta=base))
    c32, s32 = emb(x.float(), torch.arange(T)[None])
    torch.testing.assert_close(c32[0].double(), hf_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(s32[0].double(), hf_sin, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_kv,tie", [(4, False), (2, True), (1, False), (2, False)])
def test_from_hf_logits_equal_hf(n_kv, tie):
    """MHA and GQA, tied and untied: the converted dense model's logits are HF's to float32 rounding, in torch and
    in the numpy reference."""
    hf = llama(n_kv, tie)
    model = from_hf(hf)
    cfg = model.cfg
    assert (cfg.kv_heads, cfg.tie_embeddings, cfg.activation, cfg.max_loops, cfg.halt) == (n_kv, tie, "swiglu", 1,
                                                                                           "fixed")
    assert cfg.norm_eps == hf.config.rms_norm_eps and cfg.rope_base == 500.0 and cfg.ffn_width == 40
    x = tokens()
    want = hf_logits(hf, x)
    np.testing.assert_allclose(ours(model, x), want, **F32)
    ref_logits, _ = R.forward(model.to_reference(), x.numpy(), cfg)
    np.testing.assert_allclose(ref_logits, want, **F32)


@pytest.mark.parametrize("n_kv,tie", [(2, True), (4, False)])
def test_round_trip_through_folders(tmp_path, n_kv, tie):
    """HF -> (CLI from-hf) adaloop folder -> (CLI to-hf) HF folder: HF reads it back with bit-equal logits, and the
    adaloop folder loads with gpu.model.load and as an --init-from source."""
    hf = llama(n_kv, tie)
    hf.save_pretrained(tmp_path / "hf")
    assert convert_main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "ada")]) == 0
    assert convert_main(["to-hf", str(tmp_path / "ada"), str(tmp_path / "hf2")]) == 0
    x = tokens()
    want = hf_logits(hf, x)
    np.testing.assert_array_equal(hf_logits(LlamaForCausalLM.from_pretrained(tmp_path / "hf2").eval(), x), want)
    model = load(tmp_path / "ada" / "model.safetensors")
    np.testing.assert_allclose(ours(model, x), want, **F32)
    np.testing.assert_array_equal(ours(from_hf(tmp_path / "hf"), x), ours(model, x))
    assert json.loads((tmp_path / "ada" / "config.json").read_text())["recipe"] == {"kind": "from-hf"}
    to_hf(model, tmp_path / "hf3")  # the library call
    np.testing.assert_array_equal(hf_logits(LlamaForCausalLM.from_pretrained(tmp_path / "hf3").eval(), x), want)
    with pytest.raises(FileExistsError):
        to_hf(model, tmp_path / "hf3")


# ----------------------------------------------------------------------------- what does not convert
def _hf_dict(**kw):
    base = dict(model_type="llama", vocab_size=V, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    return {**base, **kw}


@pytest.mark.parametrize("changes,named", [
    (dict(attention_bias=True), "attention biases"), (dict(mlp_bias=True), "MLP biases"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope scaling (rope_type='linear')"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}), "rope scaling (rope_type='llama3')"),
    (dict(model_type="mistral", sliding_window=4096), "sliding-window attention"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"), (dict(head_dim=8), "head_dim=8"),
])
def test_unsupported_features_are_named(changes, named):
    with pytest.raises(ValueError, match="cannot convert this checkpoint: it uses .*" + re.escape(named)):
        config_from_hf(_hf_dict(**changes))


def test_live_module_with_biases_is_refused():
    with pytest.raises(ValueError, match="attention biases"):
        from_hf(llama(attention_bias=True))


def test_to_hf_refuses_what_has_no_llama_form():
    looped = R.LoopConfig(vocab_size=V, d_model=16, n_head=4, activation="swiglu", max_loops=3)
    with pytest.raises(ValueError, match=r"no Llama form: .*max_loops=3"):
        to_hf(from_reference(R.init_params(looped), looped), "/nonexistent/never-written")
    dense = dense_variant(looped.replace(activation="gelu"), 2)
    with pytest.raises(ValueError, match=r"activation='gelu' \(Llama: 'swiglu'\)"):
        to_hf(from_reference(R.init_params(dense), dense), "/nonexistent/never-written")
    dense = dense.replace(activation="swiglu")
    params = R.init_params(dense)
    params["loop.1.step_scale"][3] = 0.5  # a trained dense run's step scale
    with pytest.raises(ValueError, match=r"loop.1.step_scale != 1"):
        to_hf(from_reference(params, dense), "/nonexistent/never-written")


# ----------------------------------------------------------------------------- retrofit
@pytest.mark.parametrize("halt", sorted(R.halting.RULES))
@pytest.mark.parametrize("injection", ["none", "concat"])
def test_retrofit_reproduces_the_dense_model_at_one_loop(halt, injection):
    """Prelude 2, core 2:4, coda the last 2 of a 6-layer Llama: at max_loops = 1 the retrofitted model's logits are
    the dense model's (float64 reference: to rounding; torch float32 against HF: to float32 rounding), whatever
    the halting rule; at max_loops = 4 the same weights run with loops=1 give the same logits."""
    hf = llama(2, layers=6)
    params, cfg = from_hf_params(hf)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    new, new_cfg = retrofit(params64, cfg, [0, 1], [2, 3], [4, 5], max_loops=4, halt=halt,
                            input_injection=injection)
    assert (new_cfg.n_prelude, new_cfg.n_layer, new_cfg.n_coda, new_cfg.max_loops) == (2, 2, 2, 4)
    np.testing.assert_array_equal(new["core.1.mlp.gate.weight"], params["core.3.mlp.gate.weight"])
    x = tokens().numpy()
    dense, _ = R.forward(params64, x, cfg)
    one, _ = R.forward({k: v.astype(np.float64) for k, v in new.items()}, x, new_cfg.replace(max_loops=1))
    np.testing.assert_allclose(one, dense, rtol=1e-12, atol=1e-12)
    model = from_reference(new, new_cfg)
    np.testing.assert_allclose(ours(model, torch.from_numpy(x), loops=1), hf_logits(hf, torch.from_numpy(x)), **F32)


def test_retrofit_command_writes_a_folder_that_init_from_reads_and_trains(tmp_path):
    """`python -m gpu.convert retrofit` (dropping a middle layer, as retrofitting recurrence does), then what
    `gpu.train --init-from` does: init_config + load_init, the torch model, AdamW steps that lower the loss."""
    llama(2, tie=True, layers=5).save_pretrained(tmp_path / "hf")
    out = tmp_path / "looped"
    argv = ["retrofit", str(tmp_path / "hf"), str(out), "--prelude", "1", "--core", "1:3", "--coda", "1",
            "--max-loops", "3", "--halt", "act"]
    assert convert_main(argv) == 0
    assert convert_main(argv) == 2  # the folder exists: nothing overwritten without --overwrite
    recipe = json.loads((out / "config.json").read_text())["recipe"]
    assert (recipe["prelude"], recipe["core"], recipe["coda"]) == ([0], [1, 2], [4])  # layer 3 dropped
    cfg = init_config(out).replace(halt_penalty=0.01, max_loops=2)  # the loop's knobs may change
    model = from_reference(load_init(out, cfg), cfg)
    x, y = tokens(2, B=4), tokens(3, B=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        _, loss, _ = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_load_init_names_what_does_not_fit(tmp_path):
    hf = llama(2, layers=2)
    hf.save_pretrained(tmp_path / "hf")
    cfg = read_source(tmp_path / "hf").cfg
    assert load_init(tmp_path / "hf", cfg).keys() == R.param_shapes(cfg).keys()  # an HF folder is a source too
    with pytest.raises(ValueError, match=r"n_head: file 4, config 2.*norm_eps: file 1e-06, config 1e-05"):
        load_init(tmp_path / "hf", cfg.replace(n_head=2, n_kv_head=0, norm_eps=1e-5))
    with pytest.raises(ValueError, match=r"missing loop.0.halt.weight"):
        load_init(tmp_path / "hf", cfg.replace(halt="act"))  # a halting unit the file does not have
    with pytest.raises(ValueError, match="no model at"):
        load_init(tmp_path / "nowhere", cfg)


@pytest.mark.parametrize("spec,where,expected", [
    ("2", "prelude", [0, 1]), ("2", "coda", [4, 5]), ("1:3", "core", [1, 2]), ("-2:", "coda", [4, 5]),
    ("0", "prelude", []), ("3", "core", [2, 3, 4])])
def test_parse_layers(spec, where, expected):
    assert parse_layers(spec, 6, where, start=2) == expected


@pytest.mark.parametrize("spec,where", [("x", "core"), ("0", "core"), ("4:9", "core"), ("-1", "prelude")])
def test_parse_layers_refuses(spec, where):
    with pytest.raises(ValueError, match=f"--{where}"):
        parse_layers(spec, 6, where)


def test_retrofit_refuses_what_cannot_reproduce_the_dense_model():
    params, cfg = from_hf_params(llama(layers=2))
    with pytest.raises(ValueError, match="input_injection='add'"):
        retrofit(params, cfg, [], [0], [1], input_injection="add")
    with pytest.raises(ValueError, match=r"retrofit cannot change \['activation'\]"):
        retrofit(params, cfg, [], [0], [1], activation="gelu")
    looped, looped_cfg = retrofit(params, cfg, [], [0], [1], max_loops=2)
    with pytest.raises(ValueError, match="needs a dense model.*max_loops=2"):
        retrofit(looped, looped_cfg, [], [0], [1])


def test_convert_cli_bad_input_exit_2(tmp_path, capsys):
    assert convert_main(["from-hf", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
