"""`python -m gpu.generate RUN --prompt TEXT`: text from a trained looped model, and how deep it thought per token.

    python -m gpu.generate runs/tiny --prompt "def add(a, b):" --max-new-tokens 40 --show-depth

Each new token is predicted from the window so far (the last block_size tokens). With the key/value cache (the
default, gpu/cache.py) a new token attends to the cached keys/values of the earlier positions at every attention
site (each loop step has its own), which gives exactly the numbers of recomputing the whole window (tested);
`--no-cache` recomputes.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from .cache import KVCache
from .cli import check_float, check_int, read_json, run_command


@torch.no_grad()
def generate(model, tokens, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True):
    """Extend `tokens` (B, T) by max_new_tokens ids. temperature 0 = greedy (argmax); otherwise sample from
    softmax(logits / temperature), restricted to the top_k most likely ids if given.
    use_cache: decode with a key/value cache (gpu/cache.py) while the sequence fits in the context; the same
    numbers as recomputing the window (tested), O(T) instead of O(T^2) work per token. Past block_size the window
    slides, which the cache cannot, so from there every token recomputes the last block_size tokens.
    Returns (tokens (B, T + max_new_tokens) int64, depths (B, max_new_tokens) float: the loop steps spent on the
    position that predicted each new token, averaged over loop groups)."""
    cfg = model.cfg
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: ask for at least 1 new token")
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature={temperature}: expected a finite number >= 0 (0 = greedy)")
    if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k={top_k}: expected an int in [1, vocab_size={cfg.vocab_size}] or None")
    device = next(model.parameters()).device
    tokens = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens, device=device)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be a non-empty (batch, time) array; got shape {tuple(tokens.shape)}")
    was_training = model.training
    model.eval()
    depths = []
    cache = KVCache() if use_cache and tokens.shape[1] <= cfg.block_size else None
    for _ in range(max_new_tokens):
        if cache is not None and tokens.shape[1] > cfg.block_size:
            cache = None  # the window starts to slide: recompute from here on
        if cache is None:
            logits, _, aux = model(tokens[:, -cfg.block_size:])  # (B, <= block_size)
        else:
            logits, _, aux = model(tokens[:, cache.length:], cache=cache)  # the prompt first, then one token a call
        last = logits[:, -1].float()  # (B, V)
        depths.append(aux["n_steps"][:, -1].float().mean(dim=-1))  # (B,)
        if temperature == 0:
            nxt = last.argmax(dim=-1)
        else:
            last = last / temperature
            if top_k is not None:
                kth = torch.topk(last, top_k, dim=-1).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(last, dim=-1), 1, generator=generator)[:, 0]
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    model.train(was_training)
    return tokens, torch.stack(depths, dim=1)


def load_model(run_dir, device: str = "cpu"):
    """(torch model of the run's newest checkpoint, tokenizer of its data folder)."""
    from .data import load_tokenizer
    from .model import from_reference
    from .probe import load_run
    run = load_run(run_dir)
    model = from_reference(run.params, run.cfg, device=device)
    return model, load_tokenizer(run.data_dir)


def encode_prompt(tokenizer, text: str, cfg) -> np.ndarray:
    """(1, T) ids of a prompt; ValueError for an empty one or ids the model cannot take."""
    if not text:
        raise ValueError("the prompt is empty: pass some text with --prompt")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError(f"the prompt {text!r} encodes to no tokens: pass some text the tokenizer knows")
    if len(ids) > cfg.block_size:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context (block_size="
                         f"{cfg.block_size}): shorten it")
    if max(ids) >= cfg.vocab_size:
        raise ValueError(f"the prompt encodes to id {max(ids)} >= vocab_size={cfg.vocab_size}: the run's tokenizer "
                         f"and model disagree; pass --data with the folder the run was trained on")
    return np.asarray(ids, dtype=np.int64)[None]


def _show(tokenizer, prompt_ids, new_ids, depths, show_depth: bool) -> str:
    text = tokenizer.decode(prompt_ids) + tokenizer.decode(new_ids)
    if not show_depth:
        return text
    rows = [f"{tokenizer.decode([i])!r:>16}  depth {d:.2f}" for i, d in zip(new_ids, depths)]
    return text + "\n\n" + "\n".join(rows) + f"\nmean depth of the new tokens: {float(np.mean(depths)):.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run folder written by python -m gpu.train")
    ap.add_argument("--prompt", required=True, action="append", help="prompt text (repeat for several)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--show-depth", action="store_true", help="print each new token with its depth")
    ap.add_argument("--no-cache", action="store_true", help="recompute the window for every token (slow; for checks)")
    a = ap.parse_args(argv)
    from .train.device import resolve_device

    def compute():
        check_int("--max-new-tokens", a.max_new_tokens, 1)
        check_float("--temperature", a.temperature, 0)
        check_int("--top-k", a.top_k, 1, optional=True)
        check_int("--seed", a.seed, 0)
        device = str(resolve_device(a.device))  # ValueError naming --device
        if os.path.isfile(os.path.join(a.run, "config.json")):
            read_json(os.path.join(a.run, "config.json"), "the run folder is damaged")  # names the file
        model, tok = load_model(a.run, device)
        gen = torch.Generator(device=device).manual_seed(a.seed)
        outs = []
        for prompt in a.prompt:
            ids = encode_prompt(tok, prompt, model.cfg)
            out, depths = generate(model, ids, a.max_new_tokens, a.temperature, a.top_k, gen, not a.no_cache)
            new = out[0, ids.shape[1]:].tolist()
            outs.append(_show(tok, ids[0].tolist(), new, depths[0].tolist(), a.show_depth))
        return outs

    return run_command(compute, lambda outs: print("\n\n---\n\n".join(outs)))


if __name__ == "__main__":
    sys.exit(main())
