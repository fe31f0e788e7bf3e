"""gpu.data: the bundled topic corpus, its tokenizer, the math generator, the real-corpus path on local
files, the batch loader, and the clear errors. No network: the GPT-2 tokenizer is replaced by the
bundled one, and local json/jsonl/txt files stand in for the hub datasets."""
import ast
import hashlib
import json
import operator
import os
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gpu.data import (BUNDLED_DIR, as_uint16, check_vocab, load_split, load_tokenizer, sample_batch,
                      topic_names)
from gpu.data.mathgen import LEVELS, math_documents, worksheet
from gpu.data.shards import write_json

TOPICS = ["literature", "dialogue", "code", "technical", "math"]


def documents(tokens, eot):
    """Token arrays of the documents of a split (each ends with eot)."""
    ends = np.flatnonzero(np.asarray(tokens) == eot)
    assert len(ends) and ends[-1] == len(tokens) - 1, "split must end with the end-of-text token"
    return np.split(np.asarray(tokens), ends[:-1] + 1)


# ----------------------------------------------------------------------------- bundled corpus
@pytest.mark.parametrize("split", ["train", "val"])
def test_bundled_split_loads_and_every_token_has_a_topic(split):
    tokens, topics, meta = load_split(BUNDLED_DIR, split)
    assert tokens.dtype == np.uint16 and topics.dtype == np.uint8
    assert len(tokens) == len(topics) == meta["splits"][split]["tokens"] > 0
    assert int(tokens.max()) < meta["vocab_size"]
    assert set(np.unique(topics).tolist()) == set(range(len(TOPICS)))  # all five present, no other id
    docs = documents(tokens, meta["eot_id"])
    assert len(docs) == meta["splits"][split]["documents"]
    # the topic is a document-level label: constant from a document's first token through its eot
    doc_id = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    first = np.r_[0, np.cumsum([len(d) for d in docs])[:-1]]
    assert np.array_equal(topics, topics[first][doc_id])
    # per-topic token counts recorded in the manifest are the counts in the shards
    counts = np.bincount(topics, minlength=len(TOPICS))
    assert {p["topic"]: p["tokens"][split] for p in meta["parts"]} == dict(zip(TOPICS, counts.tolist()))


def test_bundled_topics_manifest_and_files():
    assert topic_names(BUNDLED_DIR) == TOPICS
    m = json.loads(Path(BUNDLED_DIR, "manifest.json").read_text())
    assert [p["topic"] for p in m["parts"]] == TOPICS
    for p in m["parts"]:
        assert p["source"] and p["licence"] and p["attribution"] and p["characters"] > 0
        assert p["documents"]["train"] > p["documents"]["val"] >= 1
    chars = [p["characters"] for p in m["parts"]]
    assert max(chars) <= m["build"]["max_chars_per_topic"]  # capped: no topic dwarfs the rest
    for f, digest in m["sha256"].items():  # the committed files are the ones the build wrote
        assert hashlib.sha256(Path(BUNDLED_DIR, f).read_bytes()).hexdigest() == digest, f
    size = sum(os.path.getsize(os.path.join(BUNDLED_DIR, f)) for f in os.listdir(BUNDLED_DIR))
    assert size < 6e6


def test_bundled_train_val_disjoint_by_document():
    tr, _, meta = load_split(BUNDLED_DIR, "train")
    va, _, _ = load_split(BUNDLED_DIR, "val")
    train = {d.tobytes() for d in documents(tr, meta["eot_id"])}
    val = {d.tobytes() for d in documents(va, meta["eot_id"])}
    assert train and val and not train & val


def test_tokenizer_matches_meta_and_round_trips():
    tok = load_tokenizer(BUNDLED_DIR)
    meta = json.loads(Path(BUNDLED_DIR, "manifest.json").read_text())
    assert tok.vocab_size == meta["vocab_size"] == 2048 and tok.eot_id == meta["eot_id"]
    for text in ["To be, or not to be: that is the question.",
                 "def f(x):\n\treturn {'a': x ** 2}  # comment\n\n\n",
                 "Problem: What is 5/8 + 1/3?\nAnswer: 23/24", "  leading spaces, ünïcödé, 漢字, emoji 🙂\r\n", ""]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids) and tok.eot_id not in ids
        assert tok.decode(ids) == text
    va, _, _ = load_split(BUNDLED_DIR, "val")
    doc = documents(va, tok.eot_id)[0][:-1]
    assert tok.encode(tok.decode(doc)) == doc.tolist()  # shards hold canonical encodings


# ----------------------------------------------------------------------------- math generator
BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def ev(expr):
    """Exact value of an arithmetic expression (ints, decimals, + - * / and parentheses)."""
    def f(n):
        if isinstance(n, ast.BinOp) and type(n.op) in BINOPS:
            return BINOPS[type(n.op)](f(n.left), f(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -f(n.operand)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return Fraction(repr(n.value))
        raise ValueError(f"not arithmetic: {expr!r}")
    return f(ast.parse(expr.strip(), mode="eval").body)


def expected_answer(q):
    """The answer to a generated question, recomputed from the question text alone (None: not a known form)."""
    g = lambda p: re.search(p, q)  # noqa: E731
    if m := g(r"^(?:What is|Compute|Evaluate) (.+?)[.?]$"):
        return ev(m[1])
    if m := g(r"^Add (\d+) and (\d+)"):
        return int(m[1]) + int(m[2])
    if m := g(r"^Multiply (\d+) by (\d+)"):
        return int(m[1]) * int(m[2])
    if m := g(r"^Divide (\d+) by (\d+)\.") or g(r"has (\d+) \w+ and shares them equally among (\d+)"):
        return divmod(int(m[1]), int(m[2]))
    if m := g(r"^Find (\d+)% of (\d+)\."):
        return Fraction(int(m[1]) * int(m[2]), 100)
    if m := g(r"^Solve for x: (.+) = (-?\d+)\.$"):
        return ("x", m[1], int(m[2]))
    if m := g(r"buys (\d+) \w+ at \$([\d.]+) each and pays with a \$([\d.]+) bill"):
        return ev(m[3]) - int(m[1]) * ev(m[2])
    if m := g(r"at (\d+) km/h for (\d+) hours, then at (\d+) km/h for (\d+) hours"):
        return int(m[1]) * int(m[2]) + int(m[3]) * int(m[4])
    if m := g(r"is (\d+) times as old as \w+\. In (\d+) years their ages will add up to (\d+)\."):
        k, n, s = map(int, m.groups())
        return Fraction(s - 2 * n, k + 1)
    if m := g(r"(\d+) m long and (\d+) m wide\. What is its (perimeter|area)"):
        a, b = int(m[1]), int(m[2])
        return 2 * (a + b) if m[3] == "perimeter" else a * b
    if m := g(r"recipe for (\d+) people needs (\d+) g .* for (\d+) people"):
        return Fraction(int(m[2]), int(m[1])) * int(m[3])
    return None


def check_problem(block):
    lines = block.split("\n")
    assert lines[0].startswith("Problem: ") and lines[1] == "Solution:" and lines[-1].startswith("Answer: ")
    q, ans, steps = lines[0][len("Problem: "):], lines[-1][len("Answer: "):], lines[2:-1]
    assert steps
    for s in steps:  # every worked step is a true identity
        sides = s.rsplit(": ", 1)[-1].split(" = ")
        assert len(sides) >= 2 and len({ev(x) for x in sides}) == 1, s
    want = expected_answer(q)
    assert want is not None, f"unknown problem form: {q}"
    if isinstance(want, tuple) and want[0] == "x":
        x = Fraction(ans.removeprefix("x = "))
        assert ev(re.sub(r"(\d)x", rf"\1*({x})", want[1])) == want[2], block
        return "equation"
    if isinstance(want, tuple):
        assert ans == f"{want[0]} remainder {want[1]}", block
        return "remainder"
    assert ev(ans) == want, block
    last = [s for s in steps if not s.startswith("Check:")][-1]
    assert ev(last.split(" = ")[-1]) == want, block
    return "value"


def test_math_generator_is_seeded():
    a, b = math_documents(7, 30_000), math_documents(7, 30_000)
    assert a == b and sum(map(len, a)) >= 30_000
    assert math_documents(8, 30_000) != a
    assert {int(re.match(r"Worksheet, level (\d)", d)[1]) for d in math_documents(0, 50_000)} == set(LEVELS)


def test_math_worked_answers_are_correct():
    kinds = Counter()
    for seed in range(3):
        rng = random.Random(seed)
        for level in LEVELS:
            for _ in range(40):
                for block in worksheet(rng, level).strip().split("\n\n")[1:]:
                    kinds[check_problem(block)] += 1
    assert kinds["equation"] and kinds["remainder"] and kinds["value"] > 500
    # and the math documents that went into the bundled shards
    tokens, topics, meta = load_split(BUNDLED_DIR, "val")
    tok = load_tokenizer(BUNDLED_DIR)
    math_id = TOPICS.index("math")
    docs = [d for d in documents(tokens, meta["eot_id"])]
    starts = np.r_[0, np.cumsum([len(d) for d in docs])[:-1]]
    checked = 0
    for d, s in zip(docs, starts):
        if topics[s] == math_id:
            for block in tok.decode(d[:-1]).strip().split("\n\n")[1:]:
                check_problem(block)
                checked += 1
    assert checked > 50


# ----------------------------------------------------------------------------- real-corpus path, local files
def write_files(d):
    docs = [f"Document {i}: the quick brown fox, ünïcödé and 漢字.\nIt has {i} lines." for i in range(12)]
    with open(d / "a.jsonl", "w") as f:
        for i, t in enumerate(docs[:8]):
            f.write(json.dumps({"id": i, "text": t, "url": "x"}) + "\n")
        f.write(json.dumps({"id": 99, "text": "   "}) + "\n")  # whitespace-only: skipped
    (d / "b.json").write_text(json.dumps([{"text": t} for t in docs[8:10]]))
    (d / "c.txt").write_text(f"{docs[10]}\n\n{docs[11]}\n")  # one document per paragraph
    return [str(d / n) for n in ("a.jsonl", "b.json", "c.txt")], docs


def test_local_files_through_real_corpus_path(tmp_path):
    from gpu.data.real import prepare_corpus
    files, docs = write_files(tmp_path)
    tok = load_tokenizer(BUNDLED_DIR)
    out = tmp_path / "out"
    meta = prepare_corpus("openwebtext", str(out), files=files, tokenizer=tok, cache_dir=str(tmp_path / "hf"),
                          val_fraction=0.2, batch_size=5)
    assert meta["splits"]["val"]["documents"] + meta["splits"]["train"]["documents"] == 12  # blank row skipped
    got = []
    for split in ("train", "val"):
        tokens, topics, m = load_split(str(out), split)
        assert tokens.dtype == np.uint16 and topics is None and m == meta
        got.append([d.tolist() for d in documents(tokens, tok.eot_id)])
    want = sorted(tok.encode(t.strip("\n")) + [tok.eot_id] for t in docs)
    assert sorted(got[0] + got[1]) == want  # every document read back exactly, once
    assert not {tuple(d) for d in got[0]} & {tuple(d) for d in got[1]}
    assert sum(map(len, want)) == meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    assert load_tokenizer(str(out)).vocab_size == tok.vocab_size  # the tokenizer travels with the data
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_real_corpus_cli_on_local_files(tmp_path, capsys, monkeypatch):
    import gpu.data.real
    from gpu.data.__main__ import main
    files, _ = write_files(tmp_path)
    assert main(["fineweb-edu", "--out", str(tmp_path / "o"), "--files", *files, "--cache-dir", str(tmp_path / "hf"),
                 "--tokenizer", os.path.join(BUNDLED_DIR, "tokenizer.json"), "--val-fraction", "0.1"]) == 0
    assert load_split(str(tmp_path / "o"), "val")[0].size > 0
    # the default tokenizer is GPT-2, fetched at run time: stand the bundled one in for the fetch
    fetched = []
    monkeypatch.setattr(gpu.data.real, "gpt2_tokenizer", lambda: fetched.append(1) or load_tokenizer(BUNDLED_DIR))
    assert main(["openwebtext", "--out", str(tmp_path / "g"), "--files", *files,
                 "--cache-dir", str(tmp_path / "hf")]) == 0
    assert fetched == [1] and load_split(str(tmp_path / "g"), "train")[0].size > 0
    before = open(tmp_path / "g" / "train.bin", "rb").read()
    again = ["openwebtext", "--out", str(tmp_path / "g"), "--files", files[0], "--cache-dir", str(tmp_path / "hf")]
    assert main(again) == 2 and open(tmp_path / "g" / "train.bin", "rb").read() == before  # refused, untouched
    assert "already holds a data folder: pass --overwrite" in capsys.readouterr().err
    assert main(again + ["--overwrite"]) == 0 and open(tmp_path / "g" / "train.bin", "rb").read() != before
    assert main(["bundled"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in TOPICS) and "licence" in out


def test_the_data_check_scans_in_bounded_chunks(tmp_path):
    """Token ids are checked by a scan that reads a few MB at a time: a 64 MB shard peaks at one 8 MB buffer, and a
    bad id is found at its exact position across chunk boundaries."""
    import tracemalloc
    from gpu.data.check import CHUNK_BYTES, first_at_least
    ids = np.arange(10_000, dtype=np.uint16) % 50
    ids[7777] = 60
    ids.tofile(tmp_path / "small.bin")
    assert first_at_least(tmp_path / "small.bin", np.uint16, 50, chunk_bytes=1000) == (7777, 60)
    assert first_at_least(tmp_path / "small.bin", np.uint16, 61, chunk_bytes=1001) is None
    big = np.zeros(32 << 20, dtype=np.uint16)
    big[-1] = 9
    big.tofile(tmp_path / "big.bin")
    del big
    tracemalloc.start()
    assert first_at_least(tmp_path / "big.bin", np.uint16, 9) == ((32 << 20) - 1, 9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * CHUNK_BYTES, peak


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    from gpu.data.__main__ import main
    assert main(["bundled", "--dir", str(tmp_path)]) == 2  # FileNotFoundError: not a data folder
    assert main(["openwebtext", "--out", str(tmp_path / "o"), "--files", str(tmp_path / "missing.jsonl"),
                 "--tokenizer", os.path.join(BUNDLED_DIR, "tokenizer.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: no manifest.json in {str(tmp_path)!r}: not a data folder. Build one with "
                   "`python -m gpu.data build-bundled` or `python -m gpu.data openwebtext --out DIR`",
                   f"error: no such data file: {str(tmp_path / 'missing.jsonl')!r}"]


def test_writes_are_atomic(tmp_path):
    """write_bin and write_json leave nothing under the real name (nor a temporary file) when they fail."""
    from gpu.data.shards import write_bin
    path = tmp_path / "train.bin"
    with pytest.raises(TypeError, match="expected uint16"):
        write_bin(str(path), [np.zeros(3, np.uint16), np.zeros(3, np.int64)], np.uint16)
    with pytest.raises(ValueError, match="no data to write"):
        write_bin(str(path), [], np.uint16)
    with pytest.raises(TypeError):
        write_json(str(tmp_path / "manifest.json"), {"not json": object()})
    assert os.listdir(tmp_path) == []
    assert write_bin(str(path), [np.arange(4, dtype=np.uint16)] * 2, np.uint16) == 8
    assert np.fromfile(path, dtype=np.uint16).tolist() == [0, 1, 2, 3] * 2 and os.listdir(tmp_path) == ["train.bin"]


class FakeTokenizer:
    name, eot_id = "fake", 0

    def __init__(self, vocab_size, ids):
        self.vocab_size, self.ids = vocab_size, ids

    def encode_batch(self, texts):
        return [list(self.ids) for _ in texts]


def test_clear_errors(tmp_path):
    from gpu.data.real import load_files, prepare
    with pytest.raises(FileNotFoundError, match="build-bundled"):
        load_split(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_files([str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no documents"):
        load_files([str(tmp_path / "empty.jsonl")])
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  "}\n{"text": null}\n')
    ds = load_files([str(tmp_path / "blank.jsonl")], cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="no non-empty documents"):
        prepare(ds, str(tmp_path / "o1"), load_tokenizer(BUNDLED_DIR), "blank")
    assert not os.path.exists(tmp_path / "o1")  # written in a temporary folder, renamed only when complete
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    (tmp_path / "one.txt").write_text("a single document")
    with pytest.raises(ValueError, match="at least 2 documents"):
        prepare(load_files([str(tmp_path / "one.txt")], str(tmp_path / "hf")), str(tmp_path / "o2"),
                load_tokenizer(BUNDLED_DIR), "one")
    (tmp_path / "bad.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_files([str(tmp_path / "bad.csv")])
    # ids that do not fit
    with pytest.raises(ValueError, match="out of range"):
        as_uint16([1, 70000])
    with pytest.raises(ValueError, match="out of range"):
        as_uint16([-1])
    with pytest.raises(ValueError, match="vocab_size is 2048"):
        as_uint16([2048], vocab_size=2048)
    assert as_uint16([0, 65535]).dtype == np.uint16
    with pytest.raises(ValueError, match="65536"):
        prepare(ds, str(tmp_path / "o3"), FakeTokenizer(100_000, [1]), "big")
    from datasets import Dataset
    two = Dataset.from_dict({"text": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="token id 70000"):
        prepare(two, str(tmp_path / "o4"), FakeTokenizer(65536, [1, 70000]), "wraps")
    # tokenizer / model vocab mismatch
    with pytest.raises(ValueError, match=r"2048 tokens.*vocab_size is 1000.*vocab_size=2048"):
        check_vocab(2048, 1000)
    check_vocab(2048, 2048)
    check_vocab(50257, 50304)


def test_loader_errors(tmp_path):
    write_json(str(tmp_path / "manifest.json"), {"topics": ["a"], "vocab_size": 10, "eot_id": 0})
    open(tmp_path / "train.bin", "wb").close()
    with pytest.raises(ValueError, match="empty shard"):
        load_split(str(tmp_path), "train")
    np.arange(5, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(FileNotFoundError, match="train.topics.bin"):
        load_split(str(tmp_path), "train")
    np.zeros(4, np.uint8).tofile(tmp_path / "train.topics.bin")
    with pytest.raises(ValueError, match="corrupted"):
        load_split(str(tmp_path), "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_split(str(tmp_path), "test")
    with pytest.raises(ValueError, match="seq_len=5"):
        sample_batch(np.arange(5, dtype=np.uint16), None, 2, 5, np.random.default_rng(0))


def test_sample_batch_windows_targets_and_topics():
    tokens, topics, _ = load_split(BUNDLED_DIR, "val")
    x, y, t = sample_batch(tokens, topics, 8, 64, np.random.default_rng(3))
    assert x.shape == y.shape == t.shape == (8, 64) and x.dtype == y.dtype == t.dtype == np.int64
    starts = np.random.default_rng(3).integers(0, len(tokens) - 64, size=8)
    for b, s in enumerate(starts):
        assert np.array_equal(x[b], tokens[s:s + 64]) and np.array_equal(y[b], tokens[s + 1:s + 65])
        assert np.array_equal(t[b], topics[s + 1:s + 65])
    x2, y2, t2 = sample_batch(tokens, None, 8, 64, np.random.default_rng(3))
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and t2 is None


def test_build_pipeline_is_deterministic(tmp_path):
    """write_corpus (the offline build after the packages are read) on small documents, twice."""
    from gpu.data.corpus import chunk, write_corpus
    text = "\n\n".join(f"Paragraph {i}. " + "words and more words " * (i % 7 + 1) for i in range(60))
    pieces = chunk(text, 300)
    assert all(len(p) <= 300 for p in pieces) and "".join(pieces).replace("\n", "") == text.replace("\n", "")
    docs = {"literature": pieces, "dialogue": [f"A: hi {i}\nB: hello {i}" for i in range(6)],
            "code": [f"def f{i}(x):\n    return x + {i}\n" for i in range(6)],
            "technical": [f"os.path.join{i}(a, *p)\n    Join path components." for i in range(6)],
            "math": math_documents(1, 5000)}
    outs = []
    for d in ("a", "b"):
        parts = [dict(topic=t, docs=v, source="test", licence="-", attribution="-") for t, v in docs.items()]
        write_corpus(parts, str(tmp_path / d), seed=5, vocab_size=320)
        outs.append({f: (tmp_path / d / f).read_bytes() for f in sorted(os.listdir(tmp_path / d))})
    assert outs[0] == outs[1] and len(outs[0]) == 6
    tokens, topics, meta = load_split(str(tmp_path / "a"), "train")
    assert meta["vocab_size"] == 320 and set(np.unique(topics)) == set(range(5))
