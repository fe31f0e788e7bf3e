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


def decode_in_pieces(model, tokens, first=4):
    """Logits and N(t) of feeding `tokens` through a KV cache: the first `first` positions, then one at a time."""
    from gpu.cache import KVCache
    cache, logits, depth = KVCache(), [], []
    for piece in (tokens[:, :first], *tokens[:, first:].split(1, dim=1)):
        out, _, a = model(piece, cache=cache)
        logits.append(out)
        depth.append(a["n_steps"])
    return torch.cat(logits, 1), torch.cat(depth, 1)


def decode_matches_full(model, tokens, monkeypatch):
    """Decode `tokens` in pieces through a KV cache, counting the core rows computed: logits and N(t) equal the full
    forward's (float64). -> (aux of the full forward, [(T_new, rows) per core call])."""
    full, _, aux = model(tokens)
    rows = _count_core_rows(monkeypatch)
    logits, depth = decode_in_pieces(model, tokens)
    torch.testing.assert_close(logits, full, rtol=1e-12, atol=1e-12)
    assert torch.equal(depth, aux["n_steps"])
    return aux, rows


def _count_core_rows(monkeypatch):
    """Patch gpu.block.Block.forward to record the batch rows of every core call that decodes (a Site given)."""
    import gpu.block
    rows, forward = [], gpu.block.Block.forward

    def counted(self, x, rope_cs, site=None):
        if site is not None and site.name.startswith("core."):
            rows.append((x.shape[1], x.shape[0]))
        return forward(self, x, rope_cs, site)
    monkeypatch.setattr(gpu.block.Block, "forward", counted)
    return rows


DECODE_CASES = {"masked": ("masked", {}), "compact": ("compact", {}),
                "concat-gqa-linear": ("masked", dict(input_injection="concat", n_kv_head=1, attention="linear")),
                "add-layernorm-truncated": ("masked", dict(input_injection="add", norm="layernorm",
                                                           backprop_loops=2))}


@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_executor_skips_halted_rows_and_equals_the_full_forward(case, monkeypatch):
    """One-block loop groups, batch 6 with depths varying per row: decoding computes only the rows with a running
    new token at each step (the others append held keys/values), and still gives the full forward's numbers."""
    executor, extra = DECODE_CASES[case]
    cfg = R.LoopConfig(vocab_size=17, block_size=12, d_model=8, n_head=2, init_std=0.3, max_loops=4,
                       halt_bias_init=-0.3, halt="act", act_eps=0.3, **extra)
    model = from_reference(R.init_params(cfg, 3, "float64"), cfg, executor=executor)
    tokens = torch.from_numpy(np.random.default_rng(4).integers(0, 17, (6, 12)))
    aux, rows = decode_matches_full(model, tokens, monkeypatch)
    N = aux["n_steps"][:, 4:, 0]  # (B, T - 4): the single-token calls
    assert len(np.unique(N.numpy())) > 1, "depth should vary in this case"
    single = [r for t, r in rows if t == 1]
    expected = [int((N[:, t] >= k).sum()) for t in range(N.shape[1]) for k in range(1, cfg.max_loops + 1)]
    assert sorted(single) == sorted(r for r in expected if r), "only rows with a running token are computed"
    assert sum(single) < cfg.max_loops * N.numel()


def test_decode_live_two_block_groups_run_every_step(monkeypatch):
    """Under halted_kv='live' (the default) a two-block group runs every step for every token while decoding."""
    cfg = R.LoopConfig(vocab_size=17, block_size=12, d_model=8, n_head=2, init_std=0.3, max_loops=3, n_layer=2,
                       halt="pondernet", act_eps=0.3, halt_bias_init=-0.5)
    model = from_reference(R.init_params(cfg, 1, "float64"), cfg)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 17, (2, 10)))
    full, _, aux = model(tokens)
    rows = _count_core_rows(monkeypatch)
    logits, depth = decode_in_pieces(model, tokens)
    torch.testing.assert_close(logits, full, rtol=1e-12, atol=1e-12)
    assert len(rows) == 2 * cfg.max_loops * 7 and all(r == 2 for _, r in rows)


@pytest.mark.parametrize("halt", ["act", "pondernet", "converge", "exit_gate"])
def test_decode_frozen_two_block_groups_equal_the_full_forward(halt, monkeypatch):
    """halted_kv='frozen': a token of depth N supplies at step k the keys/values of step min(k, N + 1); decoding
    runs step N + 1 for it and copies afterwards, and equals the full forward (float64)."""
    import dataclasses
    if "halted_kv" not in {f.name for f in dataclasses.fields(R.LoopConfig)}:
        pytest.skip("LoopConfig.halted_kv does not exist yet")
    cfg = R.LoopConfig(vocab_size=17, block_size=12, d_model=8, n_head=2, init_std=0.3, max_loops=4, n_layer=2,
                       halt=halt, act_eps=0.3, halt_bias_init=-0.3, halted_kv="frozen")
    model = from_reference(R.init_params(cfg, 1, "float64"), cfg)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 17, (4, 10)))
    aux, rows = decode_matches_full(model, tokens, monkeypatch)
    if halt in ("act", "converge"):  # the online decision is N: step k computes the rows with N >= k - 1
        N = aux["n_steps"][:, 4:, 0]
        expected = [int((N[:, t] >= k - 1).sum()) for t in range(6) for k in range(1, cfg.max_loops + 1)]
        assert sorted(r for t, r in rows if t == 1) == sorted(2 * [r for r in expected if r])
        assert sum(expected) < cfg.max_loops * N.numel(), "some rows should be skipped in this case"


@pytest.mark.parametrize("halt", ["fixed", "act", "pondernet", "converge", "exit_gate", "act-linear-gqa-2-blocks"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_equals_each_prompt_alone(halt, use_cache):
    """Prompts of lengths 2, 5, 3 and 1 generated as one left-padded batch give, row by row, the tokens and depths of
    generating each alone (past block_size too, where the window slides)."""
    extra = dict(attention="linear", n_kv_head=1, n_layer=2) if halt.startswith("act-") else {}
    cfg = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2, halt=halt.split("-")[0], init_std=0.3,
                       max_loops=3, halt_bias_init=-0.3, act_eps=0.3, **extra)
    model = from_reference(R.init_params(cfg, seed=2, dtype="float64"), cfg)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 17, n) for n in (2, 5, 3, 1)]
    out, depths = generate(model, prompts, 7, use_cache=use_cache, pad_id=3)
    assert out.shape == (4, 12) and depths.shape == (4, 7)
    for b, p in enumerate(prompts):
        alone, d_alone = generate(model, p[None], 7, use_cache=use_cache)
        assert torch.equal(out[b, 5 - len(p):], alone[0]) and bool((out[b, :5 - len(p)] == 3).all())
        torch.testing.assert_close(depths[b], d_alone[0], rtol=0, atol=0)
    padded = torch.stack([torch.cat([torch.full((5 - len(p),), 3), torch.from_numpy(p)]) for p in prompts])
    again, _ = generate(model, padded, 7, use_cache=use_cache, prompt_lengths=[len(p) for p in prompts])
    assert torch.equal(again, out), "a left-padded array with prompt_lengths is the same request"


@pytest.mark.parametrize("kwargs, message", [(dict(tokens=[np.array([1, 2]), np.array([], dtype=np.int64)]), "empty"),
                                             (dict(prompt_lengths=[2, 0]), "prompt_lengths"),
                                             (dict(prompt_lengths=[2, 3, 1]), "prompt_lengths"),
                                             (dict(prompt_lengths=[2, 1], pad_id=17), "pad_id")])
def test_generate_refuses_bad_padding(kwargs, message):
    cfg = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2)
    model = from_reference(R.init_params(cfg), cfg)
    kwargs = {"tokens": np.zeros((2, 2), dtype=np.int64), **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, kwargs.pop("tokens"), 2, **kwargs)
    learned = R.LoopConfig(vocab_size=17, block_size=8, d_model=8, n_head=2, rope=False)
    with pytest.raises(ValueError, match="rope=True"):
        generate(from_reference(R.init_params(learned), learned), [np.array([1, 2]), np.array([3])], 2)


def test_encode_prompt_names_characters_the_tokenizer_cannot_encode():
    """A tokenizer that drops what it does not know (unlike the byte-level ones) must not shorten a prompt silently."""
    from gpu.generate import encode_prompt

    class Letters:  # ids 1..26 for a..z, everything else dropped
        def encode(self, text):
            return [ord(c) - 96 for c in text if "a" <= c <= "z"]

        def decode(self, ids):
            return "".join(chr(i + 96) for i in ids)
    cfg = R.LoopConfig(vocab_size=32, block_size=8, d_model=8, n_head=2)
    assert encode_prompt(Letters(), "abc", cfg).tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError, match="cannot encode: '€'"):
        encode_prompt(Letters(), "ab€", cfg)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        encode_prompt(Letters(), "€€", cfg)


def test_cli_names_a_bad_token_count(capsys):
    assert main([FIXTURE_RUN, "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens=0: expected an int >= 1" in capsys.readouterr().err


def test_cli_names_a_run_without_checkpoint(tmp_path, capsys):
    import shutil
    shutil.copy(os.path.join(FIXTURE_RUN, "config.json"), tmp_path / "config.json")
    assert main([str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint yet" in err and err.count("\n") == 1
