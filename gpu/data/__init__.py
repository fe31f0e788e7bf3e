"""Data for adaloop: the bundled topic-labelled corpus, real corpora as uint16 shards, and the batch loader.

The training loop needs three calls:

    from gpu.data import BUNDLED_DIR, load_split, sample_batch, topic_names, check_vocab
    tokens, topics, meta = load_split(BUNDLED_DIR, "train")    # uint16 memmap, uint8 memmap | None, manifest
    check_vocab(meta["vocab_size"], cfg.vocab_size)             # ValueError naming both sizes and the fix
    x, y, t = sample_batch(tokens, topics, batch_size, seq_len, np.random.default_rng(0))  # (B, T) int64 each
    names = topic_names(BUNDLED_DIR)                             # t's ids -> ["literature", ..., "math"]

Commands (`python -m gpu.data --help`): `bundled` (summary of the bundled corpus), `build-bundled`
(rebuild it), `openwebtext` / `fineweb-edu` (real corpora, or `--files` local json/jsonl/txt). See docs/data.md.
"""
import os

from .shards import (as_uint16, check_vocab, fixed_windows, load_manifest, load_split, sample_batch,  # noqa: F401
                     topic_names, write_bin)
from .tokenizer import EOT, gpt2_tokenizer, load_tokenizer, train_bpe  # noqa: F401

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled")
