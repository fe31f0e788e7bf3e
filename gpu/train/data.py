"""The data a run trains on: the splits of a data folder, the targets the loss scores, and the batches."""
from __future__ import annotations

import os

import numpy as np

from ..config import TrainConfig


def load_data(tc: TrainConfig) -> dict:
    """Both splits of --data (memory-mapped), their topic ids, the manifest, the topic names and the ids of the
    topics --ignore-topics drops, after gpu.data.check's checks of every shard. ValueError or FileNotFoundError
    naming the file and the fix for a folder that is not usable data."""
    from ..data import BUNDLED_DIR, load_manifest, load_split, topic_names
    from ..data.check import check_data_folder
    data_dir = BUNDLED_DIR if tc.data == "bundled" else tc.data
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data={tc.data!r} is not a folder: use 'bundled' or a folder made by "
                         f"`python -m gpu.data openwebtext --out DIR`")
    meta = load_manifest(data_dir)
    check_data_folder(data_dir, meta)  # sizes, token ids, topic labels: before step 1, not at step 5
    train, train_topics, meta = load_split(data_dir, "train")
    val, val_topics, _ = load_split(data_dir, "val")
    topics = topic_names(data_dir)
    return dict(train=train, train_topics=train_topics, val=val, val_topics=val_topics, meta=meta,
                topics=topics, ignore_ids=ignored_topic_ids(tc.ignore_topics, topics, data_dir),
                cut_eot=int(meta["eot_id"]) if tc.whole_documents else None)


def ignored_topic_ids(spec: str, topics: list[str], data_dir) -> np.ndarray:
    """Topic ids named by --ignore-topics (comma list); ValueError naming an unknown topic."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names and not topics:
        raise ValueError(f"--ignore-topics={spec!r}: the data folder {data_dir!r} has no topic labels; drop the option")
    unknown = [n for n in names if n not in topics]
    if unknown:
        raise ValueError(f"--ignore-topics: {unknown} are not topics of {data_dir!r}; its topics are {topics}")
    return np.array([topics.index(n) for n in names], dtype=np.int64)


def scored_tokens(data, split) -> np.ndarray:
    """The tokens of a split that the loss scores as targets (all, unless --ignore-topics drops some)."""
    tokens, topics = np.asarray(data[split]), data[f"{split}_topics"]
    if topics is None or len(data["ignore_ids"]) == 0:
        return tokens
    return tokens[~np.isin(np.asarray(topics), data["ignore_ids"])]  # stays uint16: no -1 to write into it


def mask_targets(y: np.ndarray, topic, ignore_ids: np.ndarray) -> np.ndarray:
    """y (signed ints) with the targets whose topic is ignored set to -1 (the loss's ignore index). (B, T)"""
    if topic is None or len(ignore_ids) == 0:
        return y
    return np.where(np.isin(topic, ignore_ids), -1, y)


def mask_cut_documents(x: np.ndarray, y: np.ndarray, eot_id: int | None) -> np.ndarray:
    """--whole-documents: y with the targets before the window's first end-of-text input set to -1. Such a target
    belongs to a document the window starts inside of: for a task, a problem whose prompt was cut off, whose answer
    the model cannot know. Target i is predicted from inputs 0..i, so it is kept once one of them is the EOT. (B, T)"""
    if eot_id is None:
        return y
    return np.where(np.cumsum(x == eot_id, axis=1) > 0, y, -1)


def fit_vocab(mc, explicit: set, data_vocab: int):
    """The model's vocabulary follows the tokenizer unless set on the command line; then it must cover it."""
    if "vocab_size" not in explicit:
        return mc.replace(vocab_size=data_vocab)
    if mc.vocab_size < data_vocab:
        raise ValueError(f"--vocab-size={mc.vocab_size} is smaller than the tokenizer's vocabulary ({data_vocab}): "
                         f"drop --vocab-size to use the tokenizer's, or set it >= {data_vocab}")
    return mc


def training_seq_len(tc: TrainConfig, mc) -> int:
    """The length of the training sequences: --seq-len, else the model's block_size (ValueError beyond it)."""
    seq_len = tc.seq_len or mc.block_size
    if seq_len > mc.block_size:
        raise ValueError(f"--seq-len={seq_len} exceeds the model's block_size={mc.block_size}: lower --seq-len "
                         f"or raise --block-size")
    return seq_len


def sample_global_batch(data, split, batch: int, seq_len: int, rng, dist, ignore_ids=None):
    """Every rank draws the same global batch from the shared rng and keeps its own rows, so N processes see
    exactly the data one process with N times the batch would see; targets of the topics `ignore_ids` (default:
    --ignore-topics') are set to -1. (x, y, topic), each (batch, seq_len)."""
    from ..data import sample_batch
    x, y, topic = sample_batch(data[split], data[f"{split}_topics"], batch * dist.world, seq_len, rng)
    y = mask_targets(y, topic, data["ignore_ids"] if ignore_ids is None else ignore_ids)
    y = mask_cut_documents(x, y, data.get("cut_eot"))
    rows = slice(dist.rank * batch, (dist.rank + 1) * batch)
    return x[rows], y[rows], (None if topic is None else topic[rows])
