"""Token shards on disk (nanoGPT format) and the loader the training loop uses.

A data folder holds, per split (`train`, `val`):

    {split}.bin          flat uint16 token ids, documents each followed by the end-of-text token
    {split}.topics.bin   flat uint8 topic id of every token (same length), only in topic-labelled folders
    manifest.json        vocab_size, eot_id, tokenizer, topic names, per-split counts, sources and licences

`np.fromfile(path, dtype=np.uint16)` (or `np.memmap`) reads a `.bin` back; nothing else is needed.
Every file is written to a temporary name first and moved into place (reference.files.atomic_open), so an
interrupted write never leaves a half-written shard under the real name.
"""
import json
import os

import numpy as np

from reference.files import atomic_open

from ..cli import read_json

TOKEN_DTYPE = np.uint16  # nanoGPT: vocab sizes up to 65536 (GPT-2's 50257 fits)
TOPIC_DTYPE = np.uint8
SPLITS = ("train", "val")


def token_path(data_dir, split):
    return os.path.join(data_dir, f"{split}.bin")


def topic_path(data_dir, split):
    return os.path.join(data_dir, f"{split}.topics.bin")


def as_uint16(ids, vocab_size=65536):
    """`ids` as a uint16 array; ValueError if an id is negative or >= min(vocab_size, 65536)."""
    ids = np.asarray(ids, dtype=np.int64)
    limit = min(int(vocab_size), 65536)
    if ids.size and (ids.min() < 0 or ids.max() >= limit):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        why = ("uint16 shards hold ids below 65536: use a tokenizer with at most 65536 tokens" if limit == 65536
               else f"the tokenizer's vocab_size is {vocab_size}")
        raise ValueError(f"token id {bad} is out of range [0, {limit}): {why}")
    return ids.astype(TOKEN_DTYPE)


def check_vocab(tokenizer_vocab_size, model_vocab_size):
    """Raise ValueError when a model's embedding table cannot hold every id the tokenizer produces.

    A model vocab larger than the tokenizer's is fine (e.g. GPT-2's 50257 padded to 50304)."""
    if int(model_vocab_size) < int(tokenizer_vocab_size):
        raise ValueError(f"tokenizer/model vocab mismatch: the data's tokenizer has {tokenizer_vocab_size} tokens "
                         f"but the model's vocab_size is {model_vocab_size}; set the model's "
                         f"vocab_size={tokenizer_vocab_size} (or larger) or re-tokenize the data")


def write_json(path, obj):
    """Write `obj` as JSON atomically (reference.files.atomic_open)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def write_bin(path, chunks, dtype):
    """Write an iterable of 1-D arrays of `dtype` end to end into one flat binary file, atomically.

    Streams (a corpus larger than RAM is fine); returns the number of items; ValueError if there are none."""
    n = 0
    try:
        with atomic_open(path, "wb") as f:
            for c in chunks:
                if c.dtype != dtype:  # a silent cast would wrap ids modulo 2**16
                    raise TypeError(f"{path}: got a {c.dtype} chunk, expected {np.dtype(dtype)}")
                f.write(np.ascontiguousarray(c).tobytes())
                n += len(c)
            if n == 0:
                raise ValueError(f"no data to write to {path}: the input has no non-empty documents")
    except OSError as err:  # a full disk names no file of its own
        if err.filename or not err.strerror:
            raise
        raise OSError(err.errno, f"could not write {path} ({err.strerror})") from None
    return n


def output_folder_exists(out, overwrite: bool, command: str = "") -> bool:
    """Whether a writer of a data folder at `out` replaces an existing (data or empty) folder. ValueError, before
    anything is written, for a non-empty folder without --overwrite, for anything that is not a data folder, and
    for the bundled corpus (only `python -m gpu.data build-bundled --overwrite` rewrites it)."""
    out = os.path.abspath(os.fspath(out))
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled")
    if not os.path.exists(out):
        return False
    if not os.path.isdir(out):
        raise ValueError(f"{out!r} exists and is not a folder: choose another --out")
    if not os.listdir(out):
        return True
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        raise ValueError(f"{out!r} exists and is not a data folder: choose another --out (nothing was written)")
    if out == bundled and command != "build-bundled":
        raise ValueError(f"{out!r} is the bundled corpus: choose another --out (only `python -m gpu.data "
                         f"build-bundled --overwrite` rewrites it)")
    if not overwrite:
        raise ValueError(f"{out!r} already holds a data folder: pass --overwrite to replace it, or choose another "
                         f"--out (nothing was written)")
    return True


def load_manifest(data_dir):
    """The manifest.json of a data folder as a dict (FileNotFoundError naming how to build one)."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no manifest.json in {data_dir!r}: not a data folder. Build one with "
                                "`python -m gpu.data build-bundled` or `python -m gpu.data openwebtext --out DIR`")
    meta = read_json(path, "rebuild the data folder")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object; rebuild the data folder")
    return meta


def topic_names(data_dir):
    """Names of the topic ids in a data folder (index = id), or [] if its tokens carry no topics."""
    return list(load_manifest(data_dir).get("topics") or [])


def _memmap(path, dtype):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing shard {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"empty shard {path!r}: rebuild the data folder")
    return np.memmap(path, dtype=dtype, mode="r")


def load_split(data_dir, split):
    """Open one split of a data folder without reading it into memory.

    Returns (tokens, topics, meta): tokens a read-only np.memmap of uint16 ids, topics a parallel uint8
    np.memmap of topic ids (None when the folder has no topic labels), meta the manifest dict.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    meta = load_manifest(data_dir)
    tokens = _memmap(token_path(data_dir, split), TOKEN_DTYPE)
    topics = None
    if meta.get("topics"):
        topics = _memmap(topic_path(data_dir, split), TOPIC_DTYPE)
        if len(topics) != len(tokens):
            raise ValueError(f"{data_dir}: {split} has {len(tokens)} tokens but {len(topics)} topic ids; "
                             "the folder is corrupted, rebuild it")
    return tokens, topics, meta


def sample_batch(tokens, topics, batch_size, seq_len, rng):
    """Random windows of a split for next-token prediction.

    tokens: (N,) uint16 array/memmap; topics: (N,) uint8 or None; rng: np.random.Generator.
    Returns x, y, t as int64 arrays of shape (batch_size, seq_len): y[b, i] = tokens[s_b + i + 1] is the
    target of x[b, i] = tokens[s_b + i], and t[b, i] the topic id of y[b, i] (t is None without topics).
    """
    n = len(tokens)
    if n <= seq_len:
        raise ValueError(f"split has {n} tokens, too few for seq_len={seq_len}; use a shorter seq_len or more data")
    start = rng.integers(0, n - seq_len, size=batch_size)           # (B,)
    idx = start[:, None] + np.arange(seq_len + 1)                   # (B, T+1)
    w = np.asarray(tokens[idx], dtype=np.int64)                     # (B, T+1)
    t = None if topics is None else np.asarray(topics[idx[:, 1:]], dtype=np.int64)  # (B, T)
    return w[:, :-1], w[:, 1:], t


def fixed_windows(tokens, topics, n_windows, seq_len):
    """n_windows evenly spaced windows over a whole split (same layout as sample_batch): a deterministic
    evaluation set that covers every part of the split in proportion to its size."""
    n = len(tokens)
    if n <= seq_len:
        raise ValueError(f"split has {n} tokens, too few for seq_len={seq_len}; use a shorter seq_len or more data")
    start = np.linspace(0, n - seq_len - 1, n_windows).astype(np.int64)  # (B,)
    idx = start[:, None] + np.arange(seq_len + 1)                          # (B, T+1)
    w = np.asarray(tokens[idx], dtype=np.int64)
    t = None if topics is None else np.asarray(topics[idx[:, 1:]], dtype=np.int64)
    return w[:, :-1], w[:, 1:], t
