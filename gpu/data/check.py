"""Checks of a data folder before a run takes its first step: a damaged folder is named, with the fix, instead of
crashing (or silently training) later.

- manifest.json: valid JSON with a vocab_size in [1, 65536] and, when present, per-split token counts;
- every shard's size against the manifest's token count (a truncated `train.bin` is caught);
- every token id < vocab_size, and every topic label < the number of topics, in a topic file as long as its
  tokens: a scan that reads CHUNK_BYTES at a time into one buffer, so memory stays bounded on a corpus of tens of GB.
"""
from __future__ import annotations

import os

import numpy as np

from .shards import SPLITS, TOKEN_DTYPE, TOPIC_DTYPE, topic_path, token_path

CHUNK_BYTES = 8 << 20  # 8 MB read per step of the scan


def rebuild_hint(meta: dict, data_dir) -> str:
    """How to rebuild a data folder: its generator command with --overwrite, where the manifest records one."""
    task = meta.get("task") if isinstance(meta.get("task"), dict) else None
    if task and task.get("command"):
        return f"rebuild it with `{task['command']} --overwrite`"
    if meta.get("name") == "bundled topic corpus":
        return "restore it from git (`git checkout -- gpu/data/bundled`) or `python -m gpu.data build-bundled --overwrite`"
    return f"rebuild it with `python -m gpu.data openwebtext --out {data_dir} --overwrite` (or the command that made it)"


def check_manifest(meta, path) -> None:
    """ValueError naming manifest.json for a manifest the loader cannot use."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object; rebuild the data folder")
    vocab = meta.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 1 <= vocab <= 65536:
        raise ValueError(f"{path}: vocab_size={vocab!r} is invalid: expected an int in [1, 65536] (uint16 shards)")
    topics = meta.get("topics")
    if topics is not None and not (isinstance(topics, list) and all(isinstance(t, str) for t in topics)
                                   and len(topics) <= 256):
        raise ValueError(f"{path}: topics={topics!r} is invalid: expected null or a list of at most 256 names")
    splits = meta.get("splits", {})
    for split, info in (splits.items() if isinstance(splits, dict) else [("?", None)]):
        count = info.get("tokens") if isinstance(info, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{path}: splits.{split}.tokens={count!r} is invalid: expected a token count")


def first_at_least(path, dtype, limit: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, int] | None:
    """(position, value) of the first item of the flat binary file `path` that is >= limit, else None. Reads
    chunk_bytes at a time into one reused buffer."""
    item = np.dtype(dtype).itemsize
    buf = bytearray(max(item, chunk_bytes // item * item))
    start = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            block = np.frombuffer(memoryview(buf)[:n - n % item], dtype=dtype)
            if block.size and int(block.max()) >= limit:
                i = int(np.flatnonzero(block >= limit)[0])
                return start + i, int(block[i])
            start += block.size
    return None


def _count(path, dtype, expected, what, hint) -> int:
    """The number of items of a shard; ValueError when it is not a whole number or not the expected one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing shard {path!r}: {hint}")
    size, item = os.path.getsize(path), np.dtype(dtype).itemsize
    if size == 0:
        raise ValueError(f"empty shard {path!r}: {hint}")
    if size % item:
        raise ValueError(f"{path} is {size} bytes, not a whole number of {item}-byte {what}: it is truncated or "
                         f"damaged; {hint}")
    n = size // item
    if expected is not None and n != expected:
        raise ValueError(f"{path} holds {n} {what} but manifest.json says {expected}: the file is truncated, damaged "
                         f"or from another build; {hint}")
    return n


def check_split(data_dir, split: str, meta: dict) -> None:
    """Sizes, token ids and topic labels of one split (see the module docstring)."""
    hint = rebuild_hint(meta, data_dir)
    info = (meta.get("splits") or {}).get(split)
    expected = info["tokens"] if isinstance(info, dict) else None
    path = token_path(data_dir, split)
    n = _count(path, TOKEN_DTYPE, expected, "tokens", hint)
    vocab = meta["vocab_size"]
    bad = first_at_least(path, TOKEN_DTYPE, vocab)
    if bad:
        raise ValueError(f"{path}: token id {bad[1]} at position {bad[0]} is not below manifest.json's vocab_size "
                         f"{vocab}: the shard is damaged or was made with another tokenizer; {hint}")
    topics = meta.get("topics")
    if topics:
        tpath = topic_path(data_dir, split)
        _count(tpath, TOPIC_DTYPE, n, "topic labels (one per token)", hint)
        bad = first_at_least(tpath, TOPIC_DTYPE, len(topics))
        if bad:
            raise ValueError(f"{tpath}: topic label {bad[1]} at position {bad[0]} is not below the {len(topics)} "
                             f"topics of manifest.json: the labels are damaged; {hint}")


def check_data_folder(data_dir, meta: dict) -> None:
    """Every split of a data folder, before training starts; ValueError / FileNotFoundError naming the file and
    the fix."""
    check_manifest(meta, os.path.join(data_dir, "manifest.json"))
    for split in SPLITS:
        check_split(data_dir, split, meta)
