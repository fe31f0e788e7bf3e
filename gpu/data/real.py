"""Real corpora (OpenWebText, FineWeb-Edu) or local files -> uint16 token shards, the nanoGPT way.

    python -m gpu.data openwebtext --out data/owt                  # HF hub, GPT-2 BPE fetched at run time
    python -m gpu.data fineweb-edu --out data/fwe                  # the sample-10BT subset
    python -m gpu.data openwebtext --out DIR --files a.jsonl b.txt --tokenizer gpu/data/bundled/tokenizer.json

Documents come from `datasets.load_dataset`: a hub dataset, or local files (`.json`/`.jsonl` rows with a
"text" field through the "json" builder, `.txt` files through the "text" builder with one document per
paragraph, i.e. per blank-line-separated block). A seeded share of the documents (at least one) is held out
as `val`; every document is tokenized and followed by the end-of-text token, and written with
`shards.write_bin` to `{split}.bin`, then `manifest.json` last, all in a temporary folder renamed to `--out` at
the end: an interrupted run leaves no folder, and an existing data folder is replaced only with --overwrite.
No topic labels here.
"""
import codecs
import json
import math
import os

import numpy as np
from tqdm.auto import tqdm

from reference.files import atomic_folder

from .shards import TOKEN_DTYPE, as_uint16, output_folder_exists, token_path, write_bin, write_json
from .tokenizer import gpt2_tokenizer, load_tokenizer, save_tokenizer

CORPORA = {  # name -> load_dataset arguments and what the dataset card states
    "openwebtext": dict(path="Skylion007/openwebtext", name=None,
                        licence="CC0-1.0 per the dataset card (web text: copyright of the original authors)"),
    "fineweb-edu": dict(path="HuggingFaceFW/fineweb-edu", name="sample-10BT",
                        licence="ODC-By 1.0 per the dataset card, subject to Common Crawl's terms of use"),
}
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".txt": "text", ".text": "text", ".md": "text"}


def load_hub(corpus, cache_dir=None, num_proc=None, path=None, name=None, revision=None):
    """The train split of a hub corpus as a `datasets.Dataset` (downloads it; needs network)."""
    from datasets import load_dataset
    c = CORPORA[corpus]
    return load_dataset(path or c["path"], name or c["name"], split="train", revision=revision,
                        cache_dir=cache_dir, num_proc=num_proc)


def load_files(files, cache_dir=None):
    """Local .json/.jsonl (rows with a "text" field) and .txt/.md files (one document per paragraph)
    as one `datasets.Dataset` with a single "text" column."""
    from datasets import concatenate_datasets, load_dataset
    from datasets.exceptions import DatasetGenerationError
    if not files:
        raise ValueError("no input files given")
    groups = {}
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"no such data file: {f!r}")
        ext = os.path.splitext(f)[1].lower()
        if ext not in FILE_BUILDERS:
            raise ValueError(f"{f!r}: unsupported file type {ext!r}; use one of {sorted(FILE_BUILDERS)}")
        groups.setdefault(FILE_BUILDERS[ext], []).append(os.path.abspath(f))
    parts = []
    for builder, fs in groups.items():
        if all(os.path.getsize(f) == 0 for f in fs):
            continue
        kw = dict(sample_by="paragraph") if builder == "text" else {}
        try:
            ds = load_dataset(builder, data_files=fs, split="train", cache_dir=cache_dir, **kw)
        except DatasetGenerationError as err:  # wraps the reader's error (bad UTF-8, bad JSON) without the file name
            found = [(f, why) for f in fs if (why := unreadable(f))]
            name, why = found[0] if found else (", ".join(fs), str(err.__cause__ or err))
            raise ValueError(f"{name}: {why}; fix the file (UTF-8 text, JSON lines) or leave it out of --files") from None
        if "text" not in ds.column_names:
            raise ValueError(f"{fs}: no 'text' field (columns: {ds.column_names}); each row needs a 'text' string")
        ds = ds.select_columns(["text"])
        if builder == "text":  # a file's last paragraph keeps the file's final newline(s): drop them
            ds = ds.map(strip_newlines, batched=True, desc="paragraphs")
        parts.append(ds)
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"no documents in {list(files)}: the files are empty")
    return concatenate_datasets(parts)


def unreadable(path) -> str | None:
    """Why a local file is not UTF-8 text (or, for .jsonl, not one JSON object a line), read a line at a time;
    None when it reads."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = decoder.decode(raw)
            except UnicodeDecodeError as err:
                return f"not UTF-8 text (line {n}: {err.reason})"
            if path.endswith(".jsonl") and line.strip():
                try:
                    json.loads(line)
                except ValueError as err:
                    return f"line {n} is not a JSON object ({err})"
    return None


def strip_newlines(batch):
    return {"text": [t.strip("\n") for t in batch["text"]]}


def split_indices(n, val_fraction, seed):
    """Sorted train and val document indices: a seeded ceil(val_fraction * n) documents (at least 1) to val."""
    if n < 2:
        raise ValueError(f"need at least 2 documents to hold one out for validation, got {n}")
    n_val = min(n - 1, max(1, math.ceil(val_fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def tokenize_docs(ds, tok, batch_size=1024, desc="", count=None):
    """Yield, per batch of documents, one uint16 array: each non-empty document's ids then the eot id.
    `count` (a list) gets the number of documents written appended."""
    n = 0
    for i in tqdm(range(0, len(ds), batch_size), desc=desc, unit="batch", disable=len(ds) <= batch_size):
        texts = [t for t in ds[i:i + batch_size]["text"] if t and t.strip()]
        if texts:
            n += len(texts)
            yield as_uint16(np.concatenate([np.r_[d, tok.eot_id] for d in tok.encode_batch(texts)]), tok.vocab_size)
    if count is not None:
        count.append(n)


def prepare(ds, out_dir, tok, source, licence="", val_fraction=0.0005, seed=2357, batch_size=1024,
            overwrite=False):
    """Tokenize a `datasets.Dataset` with a "text" column into out_dir/{train,val}.bin + manifest.json, written in a
    temporary folder renamed into place at the end (an existing data folder is replaced only with overwrite).

    tok: any tokenizer with encode_batch/vocab_size/eot_id/name (see gpu.data.tokenizer); its ids must fit
    uint16 (vocab_size <= 65536). Returns the manifest dict."""
    if tok.vocab_size > 65536:
        raise ValueError(f"tokenizer {tok.name!r} has {tok.vocab_size} tokens; uint16 shards hold at most 65536")
    if "text" not in ds.column_names:
        raise ValueError(f"the dataset has no 'text' column (columns: {ds.column_names})")
    replace = output_folder_exists(out_dir, overwrite)
    train, val = split_indices(len(ds), val_fraction, seed)
    with atomic_folder(out_dir, overwrite=replace) as tmp:
        manifest = _write_prepared(ds, tmp, tok, source, licence, (train, val), batch_size,
                                   {"val_fraction": val_fraction, "seed": seed})
    return manifest


def _write_prepared(ds, out_dir, tok, source, licence, indices, batch_size, build) -> dict:
    """The files of `prepare` in `out_dir`, the manifest last."""
    tok_file = None
    if tok.name != "gpt2" and hasattr(tok, "tok"):  # a local HF tokenizer travels with the data
        tok_file = "tokenizer.json"
        save_tokenizer(tok, os.path.join(out_dir, tok_file))
    splits = {}
    for split, idx in zip(("train", "val"), indices):
        docs = []
        n = write_bin(token_path(out_dir, split), tokenize_docs(ds.select(idx), tok, batch_size, split, docs),
                      TOKEN_DTYPE)
        splits[split] = {"documents": docs[0], "tokens": n}
    manifest = {
        "name": source, "format": "nanoGPT uint16 token shards",
        "tokenizer": tok_file or tok.name, "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "topics": None, "splits": splits,
        "parts": [{"topic": None, "source": source, "licence": licence, "documents": sum(
            s["documents"] for s in splits.values()), "tokens": sum(s["tokens"] for s in splits.values())}],
        "build": build,
    }
    write_json(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest


def prepare_corpus(corpus, out_dir, files=None, tokenizer=None, cache_dir=None, num_proc=None, path=None,
                   name=None, revision=None, overwrite=False, **kw):
    """`python -m gpu.data {openwebtext,fineweb-edu}`: load (hub, or `files` when given), tokenize, write.

    tokenizer: None for GPT-2 (fetched at run time), a tokenizer object, or a tokenizer.json path."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(CORPORA)}")
    output_folder_exists(out_dir, overwrite)  # refuse before a long download
    if tokenizer is None or tokenizer == "gpt2":  # resolve first: fail before a long download
        tokenizer = gpt2_tokenizer()
    elif isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    c = CORPORA[corpus]
    if files:
        ds = load_files(files, cache_dir)
        source, licence = f"local files: {', '.join(os.path.basename(f) for f in files)}", "that of the files"
    else:
        ds = load_hub(corpus, cache_dir, num_proc, path, name, revision)
        source, licence = f"HF dataset {path or c['path']} {name or c['name'] or ''}".strip(), c["licence"]
    return prepare(ds, out_dir, tokenizer, source, licence, overwrite=overwrite, **kw)
