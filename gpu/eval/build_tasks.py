"""`python -m gpu.eval.build_tasks`: write gpu/eval/tasks/bundled_val.jsonl, the data of the shipped lm-eval tasks,
from the bundled corpus's validation split (deterministic: the same file every time; a test checks it).

One row per kept document (the first PER_TOPIC documents of each topic): its topic; `text`, the document's first
~TEXT_CHARS characters cut at whitespace (adaloop_ppl), and n_tokens, its length in the bundled tokenizer's tokens;
`context`, the text up to a word boundary near CONTEXT_CHARS; `continuation`, the next two words after a space;
`next_word`, the first of them (adaloop_next_word); `choices`, the continuation and three from documents of other
topics, in a seeded order, with `label` the index of the true one (adaloop_cloze).
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from reference.files import atomic_write_text

from ..data import BUNDLED_DIR, load_split, load_tokenizer

PER_TOPIC, CONTEXT_CHARS, TEXT_CHARS, N_CHOICES, SEED = 8, 240, 1200, 4, 14
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks", "bundled_val.jsonl")


def documents(data_dir=BUNDLED_DIR, split="val") -> list[tuple[str, str]]:
    """(topic, text) of every document of a split, in order (documents end at <|endoftext|>)."""
    tokens, topics, meta = load_split(data_dir, split)
    tok, names = load_tokenizer(data_dir), meta.get("topics") or []
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == meta["eot_id"])
    starts = np.r_[0, ends[:-1] + 1]
    out = []
    for s, e in zip(starts, ends):
        if e > s:
            topic = names[int(topics[s])] if topics is not None else ""
            out.append((topic, tok.decode(tokens[s:e].tolist())))
    return out


def cut(text: str, at: int) -> str:
    """The text before the first whitespace at or after character `at` (all of it if there is none)."""
    m = re.compile(r"\s").search(text, at)
    return text if m is None else text[:m.start()]


def row(topic: str, text: str) -> dict | None:
    """A task row of one document, or None for a document too short for a two-word continuation."""
    text = text.strip()
    context = cut(text, CONTEXT_CHARS).rstrip()
    words = text[len(context):].split()
    if len(words) < 2 or len(context) < CONTEXT_CHARS // 2:
        return None
    return dict(topic=topic, text=cut(text, TEXT_CHARS), context=context, continuation=" " + " ".join(words[:2]),
                next_word=words[0])


def build(data_dir=BUNDLED_DIR) -> list[dict]:
    """The rows, with choices drawn from other topics' continuations and n_tokens counted."""
    tok = load_tokenizer(data_dir)
    kept: dict[str, list[dict]] = {}
    for topic, text in documents(data_dir):
        r = row(topic, text)
        if r is not None and len(kept.setdefault(topic, [])) < PER_TOPIC:
            kept[topic].append(r)
    rows = [r for topic in sorted(kept) for r in kept[topic]]
    rng = np.random.default_rng(SEED)
    for r in rows:
        others = sorted({o["continuation"] for o in rows if o["topic"] != r["topic"]} - {r["continuation"]})
        choices = [r["continuation"]] + [others[i] for i in rng.choice(len(others), N_CHOICES - 1, replace=False)]
        order = rng.permutation(N_CHOICES)
        r["choices"] = [choices[i] for i in order]
        r["label"] = int(np.flatnonzero(order == 0)[0])
        r["n_tokens"] = len(tok.encode(r["text"]))
    return rows


def write(path=OUT, data_dir=BUNDLED_DIR) -> str:
    rows = build(data_dir)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return f"wrote {path}: {len(rows)} rows from the {os.path.basename(data_dir)} validation split"


def main(argv=None) -> int:
    from ..cli import run_command
    return run_command(write, print)


if __name__ == "__main__":
    sys.exit(main())
