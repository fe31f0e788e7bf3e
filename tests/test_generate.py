"""gpu.generate: greedy generation equals the reference's argmax, token by token; bad input is named."""
import os

import numpy as np
import pytest
import torch

import reference as R
from gpu.generate import generate, main
from gpu.model import from_reference

FIXTURE_RUN = os.path.join(os.path.dirname(__file__), "fixtures", "main-1399fe0", "run")


@pytest.mark.parametrize("halt", ["fixed", "act", "pondernet", "converge"])
def test_equivalence_generate_greedy_matches_the_reference(halt):
    """Every new token is the argmax of the reference's logits at the last position of the window (float64),
    past the context length too (the window slides), and its depth is the reference's N there."""
    cfg = R.LoopConfig(vocab_size=17, block_size=6, d_model=8, n_head=2, halt=halt, init_std=0.3, max_loops=3)
    params = R.init_params(cfg, seed=1, dtype="float64")
    model = from_reference(params, cfg)
    prompt = np.random.default_rng(0).integers(0, 17, (2, 4))
    out, depths = generate(model, prompt, max_new_tokens=5)
    assert out.shape == (2, 9) and depths.shape == (2, 5)
    seq = prompt.copy()
    for i in range(5):
        logits, aux = R.forward(params, seq[:, -cfg.block_size:], cfg)
        nxt = logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(out[:, 4 + i].numpy(), nxt)
        np.testing.assert_allclose(depths[:, i].numpy(), aux["n_steps"][:, -1].mean(-1))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)


def test_sampling_is_seeded_and_top_k_restricts():
    cfg = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2, init_std=0.3)
    model = from_reference(R.init_params(cfg, seed=1, dtype="float64"), cfg)
    prompt = np.zeros((3, 2), dtype=np.int64)
    a, _ = generate(model, prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b, _ = generate(model, prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    one, _ = generate(model, prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(5))
    greedy, _ = generate(model, prompt, 6)
    assert torch.equal(one, greedy), "top_k=1 sampling is greedy"


@pytest.mark.parametrize("kwargs, message", [(dict(max_new_tokens=0), "at least 1"),
                                             (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
                                             (dict(max_new_tokens=2, top_k=0), "top_k")])
def test_generate_refuses_bad_arguments(kwargs, message):
    cfg = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2)
    with pytest.raises(ValueError, match=message):
        generate(from_reference(R.init_params(cfg), cfg), np.zeros((1, 2), dtype=np.int64), **kwargs)


def test_cli_on_a_run_folder(capsys):
    assert main([FIXTURE_RUN, "--prompt", "x = 1", "--max-new-tokens", "3", "--show-depth"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("x = 1") and "mean depth of the new tokens" in out


@pytest.mark.parametrize("argv, message", [(["--prompt", ""], "prompt is empty"),
                                           (["--prompt", "y " * 40], "longer than the model's context")])
def test_cli_names_bad_prompts(argv, message, capsys):
    assert main([FIXTURE_RUN, *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_names_a_missing_run(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


CACHE_CASES = {"act": dict(halt="act"), "pondernet-2-blocks": dict(halt="pondernet", n_layer=2, act_eps=0.3),
               "converge-linear-attention": dict(halt="converge", attention="linear"),
               "exit-gate-moe-memory": dict(halt="exit_gate", ffn="moe", memory="both"),
               "fixed-no-rope-layer-scope": dict(halt="fixed", rope=False, n_layer=2, loop_scope="layer")}


@pytest.mark.parametrize("case", CACHE_CASES)
def test_equivalence_kv_cache_decoding_equals_the_full_forward(case):
    """Feeding a sequence in pieces through a KV cache gives the full forward's logits and N(t) (float64), also for
    two-block loop groups, where a halted token's later keys/values change (the cache keeps every step's)."""
    from gpu.cache import KVCache
    cfg = R.LoopConfig(vocab_size=17, block_size=12, d_model=8, n_head=2, init_std=0.3, max_loops=3,
                       halt_bias_init=-0.5, **CACHE_CASES[case])
    model = from_reference(R.init_params(cfg, 1, "float64"), cfg)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 17, (2, 10)))
    full, _, aux = model(tokens)
    cache, logits, depth = KVCache(), [], []
    for piece in (tokens[:, :4], *tokens[:, 4:].split(1, dim=1)):
        out, _, a = model(piece, cache=cache)
        logits.append(out)
        depth.append(a["n_steps"])
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.cat(depth, 1), aux["n_steps"])
    assert len(np.unique(aux["n_steps"].numpy())) > 1 or cfg.halt == "fixed", "depth should vary in this case"
    with pytest.raises(ValueError, match="exceed block_size"):
        model(tokens[:, :3], cache=cache)


@pytest.mark.parametrize("halt", ["act", "exit_gate"])
def test_generate_with_the_cache_equals_recomputing(halt):
    """Greedy tokens and depths are the same with and without the cache, past block_size too (the cache then
    gives way to the sliding window)."""
    cfg = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2, halt=halt, init_std=0.3, max_loops=3)
    model = from_reference(R.init_params(cfg, seed=2, dtype="float64"), cfg)
    prompt = np.random.default_rng(1).integers(0, 17, (3, 3))
    cached, d_cached = generate(model, prompt, 9, use_cache=True)
    fresh, d_fresh = generate(model, prompt, 9, use_cache=False)
    assert torch.equal(cached, fresh) and torch.equal(d_cached, d_fresh)
