"""`python -m gpu.generate RUN --prompt TEXT`: text from a trained looped model, and how deep it thought per token.

    python -m gpu.generate runs/tiny --prompt "def add(a, b):" --max-new-tokens 40 --show-depth

Each new token is predicted from the window so far (the last block_size tokens). With the key/value cache (the
default, gpu/cache.py) a new token attends to the cached keys/values of the earlier positions at every attention
site (each loop step has its own), which gives exactly the numbers of recomputing the whole window (tested);
`--no-cache` recomputes. A token that halted early then costs almost nothing at the later loop steps
(gpu/executors/decode.py). `generate` also takes a batch of prompts of different lengths (left-padded).
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
             generator: torch.Generator | None = None, use_cache: bool = True, pad_id: int = 0,
             prompt_lengths=None):
    """Extend `tokens` (B, T) by max_new_tokens ids. temperature 0 = greedy (argmax); otherwise sample from
    softmax(logits / temperature), restricted to the top_k most likely ids if given.
    Prompts of different lengths: pass a list of 1-D id arrays (left-padded here with pad_id), or a left-padded
    (B, T) array with prompt_lengths (B,), each row's real ids at its right end. Row b then sits at positions 0.. from
    its first real id (RoPE) and no real position attends to a padded one (gpu/cache.py), so each row's tokens are
    those of generating its prompt alone (tested); the pads stay in the returned array.
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
    tokens, pad = left_pad(tokens, pad_id, prompt_lengths, cfg)
    tokens, pad = tokens.to(device), None if pad is None else pad.to(device)
    was_training = model.training
    model.eval()
    depths = []
    fits = use_cache and tokens.shape[1] <= cfg.block_size
    cache = KVCache(pad, capacity=cfg.block_size) if fits else None
    for _ in range(max_new_tokens):
        if cache is not None and tokens.shape[1] > cfg.block_size:
            cache = None  # the window starts to slide: recompute from here on
        if cache is None:
            logits, _, aux = _window(model, tokens, pad)  # (B, <= block_size)
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


def _window(model, tokens, pad):
    """The model on the last block_size columns, recomputed; left pads (B,) still inside the window go through a
    fresh cache, which masks them (gpu/cache.py)."""
    window = tokens[:, -model.cfg.block_size:]
    if pad is not None:
        pad = (pad - (tokens.shape[1] - window.shape[1])).clamp(min=0)
        if bool(pad.any()):
            return model(window, cache=KVCache(pad, capacity=window.shape[1]))
    return model(window)


def left_pad(tokens, pad_id: int, prompt_lengths, cfg):
    """(tokens (B, T) int64, left pads (B,) or None when every row is full) from a (B, T) array, a left-padded one
    with prompt_lengths, or a list of 1-D id arrays; ValueError naming what is wrong."""
    ragged = isinstance(tokens, (list, tuple)) and len(tokens) > 0 and all(np.ndim(t) == 1 for t in tokens)
    if ragged:
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths is for a left-padded (B, T) array; a list of prompts gives its own lengths")
        rows = [torch.as_tensor(np.asarray(t) if not torch.is_tensor(t) else t).long().cpu() for t in tokens]
        prompt_lengths = [len(r) for r in rows]
        if min(prompt_lengths) < 1:
            raise ValueError(f"prompt {prompt_lengths.index(0)} is empty: every prompt needs at least one token")
        T = max(prompt_lengths)
        tokens = torch.stack([torch.cat([r.new_full((T - len(r),), pad_id), r]) for r in rows])
    tokens = tokens if torch.is_tensor(tokens) else torch.as_tensor(np.asarray(tokens))
    if tokens.ndim != 2 or tokens.shape[1] < 1 or tokens.shape[0] < 1:
        raise ValueError(f"tokens must be a non-empty (batch, time) array or a list of 1-D prompts; got shape "
                         f"{tuple(tokens.shape)}")
    tokens = tokens.long()
    if prompt_lengths is None:
        return tokens, None
    lengths = torch.as_tensor(np.asarray(prompt_lengths)).long().cpu()
    B, T = tokens.shape
    if lengths.shape != (B,) or bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(f"prompt_lengths={lengths.tolist()}: expected {B} lengths in [1, {T}] (one per row)")
    if not 0 <= pad_id < cfg.vocab_size:
        raise ValueError(f"pad_id={pad_id}: expected an id in [0, vocab_size={cfg.vocab_size})")
    pad = T - lengths
    if not bool(pad.any()):
        return tokens, None
    if not cfg.rope:
        raise ValueError("left padding needs rope=True (the learned position table is added by column, so a padded "
                         "row's positions would shift): generate prompts of equal length together instead")
    return tokens, pad


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
    lost = sorted(set(text) - set(tokenizer.decode(ids)))
    if lost:
        raise ValueError(f"the prompt has characters the run's tokenizer cannot encode: {''.join(lost)!r}; remove "
                         f"them (a byte-level tokenizer, like the bundled one, encodes any text)")
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
