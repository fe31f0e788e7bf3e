"""Synthetic tasks with a known, per-token difficulty: does the learned depth track it?

Every task is a seeded generator of short problems, one document each (ended by <|endoftext|>), written as a
data folder that `python -m gpu.train --data DIR` trains on. The vocabulary is character level (CHARS), and the
per-token labels ("topics") put the difficulty in the eval's depth-by-topic report:

    prompt tokens      -> "prompt"          answer tokens -> "<measure><value>" (e.g. "carry3")
    the <|endoftext|>  -> "end"

The label of token i is the label of what is *predicted* at position i-1 (gpu.data.sample_batch), so the depth
spent at the position before an answer digit is filed under that digit's difficulty. Each folder also holds
per-token difficulty measures ({split}.difficulty.{name}.bin, uint8, NA=255 off the answer) for
`python -m gpu.analyze difficulty`.

    addition  "00457+00385=000842"  a + b with n significant digits, zero-padded to a fixed width (--width, default
              max_size; 0 = no padding), answer width+1 digits, most significant first (so the first answer digit
              needs the whole carry chain). The fixed width keeps every digit at a fixed offset from its column's
              answer digit, which a small model learns in minutes; "longer operands" then means more significant
              digits in the same width. measures: carry_chain (length of the run of carries that ends at this
              digit), lookback (digits to read to know the incoming carry: 1 + the run of a_j + b_j = 9 just
              below), longest_carry_chain and operand_length (per problem), significant (0 on the answer's
              leading padding zeros).
    parity    "10110=1"          parity of n bits. measures: length (= n), ones.
    phop      "3:abcabd...=c"    p-hop induction (Sanford et al. 2024): from the last symbol, p times jump to the
              token after the previous occurrence of the current token; answer = the token reached. The sequence
              draws --length symbols (default 24) from --alphabet letters (default 6). --queries Q > 0 writes Q
              questions per sequence, "abcabd|2a=c1d=b": each a hop count, a letter standing in for the last
              symbol, and its answer (Q scored answers per sequence instead of one). measures: hops.
    chain     "c=a:a=7:b=2|c?7b?2"  multi-query variable chasing: `queries` chains, each a digit bound to a
              variable and d - 1 more variables bound each to the one before (d uniform in 1..p), statements
              shuffled, then every chain's last variable queried. Each answer digit needs d sequential lookups, so
              depth can vary per token inside one sequence. measures: hops (= d, on the answer digits).

    python -m gpu.tasks make addition --out runs/tasks/addition            # the data folder
    python -m gpu.tasks train addition --out runs/addition                 # make (if needed) + train the preset
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from reference.files import atomic_folder

from .cli import check_int, run_command
from .task_problems import (PHOP_ALPHABET, addition_problem, carries, chain_problem,  # noqa: F401 (gpu.tasks.* API)
                            parity_problem, phop_answer, phop_problem)

EOT, UNK = "<|endoftext|>", "<unk>"
CHARS = list("0123456789+=:|?abcdefghijklmnopqrstuvwxyz")  # one token each; ids 2.. (0 = EOT, 1 = UNK)
NA = 255  # difficulty value of a token the measure does not apply to (prompt, end)
SPLIT_SEED = {"train": 0, "val": 1}


# ----------------------------------------------------------------------------- tokenizer
def vocab() -> dict[str, int]:
    return {EOT: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(CHARS)}}


def encode(text: str) -> list[int]:
    """Character ids; ValueError naming a character outside CHARS."""
    v = vocab()
    bad = sorted(set(text) - set(v))
    if bad:
        raise ValueError(f"characters {bad} are not in the task vocabulary {''.join(CHARS)!r}")
    return [v[c] for c in text]


def write_tokenizer(path) -> None:
    """A character-level HF `tokenizers` WordLevel tokenizer (tokenizer.json) that gpu.data.load_tokenizer reads."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel(vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character is a word
    tok.decoder = decoders.Fuse()  # join without spaces
    tok.add_special_tokens([EOT, UNK])
    tok.save(os.fspath(path), pretty=False)


# name -> (problem function, the argument drawn per problem, the measure that labels answer tokens, defaults)
TASKS = {
    "addition": dict(fn=addition_problem, label="carry_chain", short="carry", size_arg="n",
                     defaults=dict(min_size=1, max_size=8)),
    "parity": dict(fn=parity_problem, label="length", short="len", size_arg="n",
                   defaults=dict(min_size=2, max_size=16)),
    "phop": dict(fn=phop_problem, label="hops", short="hop", size_arg="hops",
                 defaults=dict(min_size=1, max_size=4)),
    "chain": dict(fn=chain_problem, label="hops", short="hop", size_arg="hops",
                  defaults=dict(min_size=4, max_size=4)),
}


def problems(task: str, n: int, seed: int, min_size: int | None = None, max_size: int | None = None, **kw):
    """n seeded problems of `task`, the size (digits, bits, hops) uniform in [min_size, max_size]."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    spec = TASKS[task]
    lo = spec["defaults"]["min_size"] if min_size is None else min_size
    hi = spec["defaults"]["max_size"] if max_size is None else max_size
    if not 1 <= lo <= hi:
        raise ValueError(f"size range [{lo}, {hi}] is invalid: need 1 <= min_size <= max_size")
    if task == "addition" and kw.get("width") is None:
        kw["width"] = hi  # fixed width: every problem of a folder has the same layout
    rng = np.random.default_rng(seed)
    return [spec["fn"](rng, int(s), **kw) for s in rng.integers(lo, hi + 1, n)]


def label_names(task: str, max_value: int) -> list[str]:
    """Topic names: prompt, end, then one per value 0..max_value of the task's label measure."""
    short = TASKS[task]["short"]
    return ["prompt", "end"] + [f"{short}{v}" for v in range(max_value + 1)]


def encode_problems(probs, task: str, names: list[str]):
    """Token ids, label ids and measures of a list of problems, end to end (each followed by EOT).
    A measure value None marks an answer-side token that is not an answer (chain's query letters): label prompt, NA.
    Returns (tokens (N,) uint16, labels (N,) uint8, {measure: (N,) uint8 with NA off the answers})."""
    label_measure, short = TASKS[task]["label"], TASKS[task]["short"]
    index = {n: i for i, n in enumerate(names)}
    toks, labs, meas = [], [], {k: [] for k in probs[0][2]}
    for prompt, answer, m in probs:
        toks += encode(prompt + answer) + [0]
        labs += [index["prompt"]] * len(prompt) + [index["prompt" if v is None else f"{short}{v}"]
                                                     for v in m[label_measure]] + [index["end"]]
        for k in meas:
            meas[k] += [NA] * len(prompt) + [NA if v is None else min(int(v), NA - 1) for v in m[k]] + [NA]
    return (np.asarray(toks, np.uint16), np.asarray(labs, np.uint8),
            {k: np.asarray(v, np.uint8) for k, v in meas.items()})


def measure_path(data_dir, split: str, name: str) -> str:
    return os.path.join(data_dir, f"{split}.difficulty.{name}.bin")


def write_task(task: str, out: str, n_train: int = 50000, n_val: int = 2000, seed: int = 0,
               min_size: int | None = None, max_size: int | None = None, overwrite: bool = False, **kw) -> dict:
    """Write a data folder for `task` (see the module docstring), atomically: built in a temporary folder beside
    `out`, then renamed into place. An existing data folder is replaced only with overwrite=True (--overwrite); any
    other non-empty path, and the bundled corpus, are a ValueError before anything is written. Returns the
    manifest."""
    from .data.shards import (TOPIC_DTYPE, TOKEN_DTYPE, output_folder_exists, topic_path, token_path, write_bin,
                              write_json)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train={n_train}, n_val={n_val}: both must be >= 1")
    spec = TASKS.get(task) or problems(task, 0, 0)  # problems() raises the unknown-task error
    replace = output_folder_exists(out, overwrite)
    kw = {k: v for k, v in kw.items() if v is not None}
    if task == "addition":
        kw.setdefault("width", max_size if max_size is not None else spec["defaults"]["max_size"])
    splits = {s: problems(task, n, seed * 1000 + SPLIT_SEED[s], min_size, max_size, **kw)
              for s, n in (("train", n_train), ("val", n_val))}
    max_value = max(v for probs in splits.values() for p in probs for v in p[2][spec["label"]] if v is not None)
    names = label_names(task, max_value)
    with atomic_folder(out, overwrite=replace) as tmp:
        counts = {}
        for split, probs in splits.items():
            toks, labs, meas = encode_problems(probs, task, names)
            write_bin(token_path(tmp, split), [toks], TOKEN_DTYPE)
            write_bin(topic_path(tmp, split), [labs], TOPIC_DTYPE)
            for k, v in meas.items():
                write_bin(measure_path(tmp, split, k), [v], np.uint8)
            counts[split] = {"documents": len(probs), "tokens": int(len(toks))}
        write_tokenizer(os.path.join(tmp, "tokenizer.json"))
        sizes = dict(min_size=min_size if min_size is not None else spec["defaults"]["min_size"],
                     max_size=max_size if max_size is not None else spec["defaults"]["max_size"])
        manifest = {
            "name": f"synthetic task: {task}", "format": "nanoGPT uint16 token shards + uint8 labels per token",
            "tokenizer": "tokenizer.json", "tokenizer_kind": "character level (gpu.tasks.CHARS)",
            "vocab_size": len(vocab()), "eot_id": 0, "eot": EOT, "topics": names, "splits": counts,
            "task": dict(name=task, seed=seed, **sizes, **kw, size_arg=spec["size_arg"],
                         label_measure=spec["label"], measures=sorted(splits["train"][0][2]), na=NA,
                         command=f"python -m gpu.tasks make {task} --out {out} --seed {seed} --n-train {n_train} "
                                 f"--n-val {n_val} --min-size {sizes['min_size']} --max-size {sizes['max_size']}"
                                 + "".join(f" --{k.replace('_', '-')} {v}" for k, v in kw.items())),
            "parts": [dict(topic=None, source=f"gpu.tasks {task} generator, seed {seed}", licence="generated",
                           documents={s: c["documents"] for s, c in counts.items()},
                           tokens={s: c["tokens"] for s, c in counts.items()})],
        }
        write_json(os.path.join(tmp, "manifest.json"), manifest)
    return manifest


def load_measures(data_dir, split: str) -> dict[str, np.memmap]:
    """The per-token difficulty measures of a task folder ({} for a folder that is not a synthetic task)."""
    from .data.shards import load_manifest
    task = load_manifest(data_dir).get("task")
    if not task:
        return {}
    return {k: np.memmap(measure_path(data_dir, split, k), dtype=np.uint8, mode="r") for k in task["measures"]}


# ----------------------------------------------------------------------------- training presets
# Small models that learn the tasks on a CPU in minutes (one thread). Halting is ACT with the project defaults;
# only size, loops and schedule are set, so the presets say nothing about which halting setting "works". The loss
# scores every token; --ignore-topics=prompt scores only the answers (measured on addition: with the default
# halting it collapses depth to ~1 step and gets fewer answers right, 91.9% vs 98.4%; see docs/results.md).
def _preset(block_size: int = 64, max_loops: int = 6) -> dict:
    return dict(model=dict(d_model=64, n_head=4, block_size=block_size, n_prelude=1, n_layer=1, n_coda=1,
                           max_loops=max_loops),
                train=dict(max_steps=3000, batch_size=32, lr=3e-3, warmup=100, eval_every=500, ckpt_every=500,
                           weight_decay=0.0))


PRESETS = {"addition": _preset(), "parity": _preset(), "phop": _preset(),
           "chain": _preset(block_size=128, max_loops=8)}  # a chain problem is ~55 tokens, up to 4 lookups deep


def train_args(task: str, data: str, out: str) -> list[str]:
    """The `python -m gpu.train` arguments of a task's preset."""
    if task not in PRESETS:
        raise ValueError(f"no training preset for task {task!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[task]
    fields = {**p["model"], **p["train"], "data": data, "out": out}
    return [option(k, v) for k, v in fields.items()]


def option(name: str, value) -> str:
    """One gpu.train option: `--name=value`, or for a boolean the flag `--name` / `--no-name`."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag}={value}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.tasks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a task's data folder")
    t = sub.add_parser("train", help="write the data folder (unless --data exists) and train the task's preset; "
                                     "further --field=value options go to gpu.train")
    m.add_argument("--seed", type=int, default=0, help="generator seed")
    t.add_argument("--data-seed", type=int, default=0, help="generator seed, if the data folder must be made "
                                                            "(--seed=N is gpu.train's seed and passes through)")
    for p in (m, t):
        p.add_argument("task", choices=sorted(TASKS))
        p.add_argument("--n-train", type=int, default=50000, help="problems in the train split")
        p.add_argument("--n-val", type=int, default=2000, help="problems in the val split")
        p.add_argument("--min-size", type=int, default=None, help="fewest digits / bits / hops (task default)")
        p.add_argument("--max-size", type=int, default=None, help="most digits / bits / hops (task default)")
        p.add_argument("--width", type=int, default=None, help="addition: pad operands to this many digits "
                                                               "(default max-size; 0 = no padding)")
        p.add_argument("--alphabet", type=int, default=None,
                       help=f"phop: letters a sequence draws from (default 6, at most {len(PHOP_ALPHABET)}); more "
                            "letters, fewer repeats of the symbol a hop looks up")
        p.add_argument("--length", type=int, default=None, help="phop: symbols per sequence (default 24)")
        p.add_argument("--queries", type=int, default=None,
                       help="phop: answers per sequence, the multi-query layout (default 0: one, the original "
                            "layout); chain: queried chains per problem (default 4)")
    m.add_argument("--out", required=True, help="output data folder")
    m.add_argument("--overwrite", action="store_true", help="replace an existing data folder at --out")
    t.add_argument("--data", default=None, help="data folder (default runs/tasks/TASK)")
    t.add_argument("--out", required=True, help="run folder")
    a, rest = ap.parse_known_args(argv)
    if a.cmd == "make" and rest:
        ap.error(f"unknown option(s) {rest}")
    data = getattr(a, "data", None) or f"runs/tasks/{a.task}"
    code = run_command(lambda: make_data(a, data))
    if code or a.cmd == "make":
        return code
    from .train import main as train_main
    return train_main(train_args(a.task, data, a.out) + rest)


def check_args(a) -> None:
    """ValueError naming the flag for an option value no generator accepts."""
    for flag, value in (("--n-train", a.n_train), ("--n-val", a.n_val)):
        check_int(flag, value, 1)
    for flag in ("--min-size", "--max-size"):
        check_int(flag, getattr(a, flag[2:].replace("-", "_")), 1, optional=True)
    check_int("--width", a.width, 0, optional=True)
    check_int("--seed" if a.cmd == "make" else "--data-seed", a.seed if a.cmd == "make" else a.data_seed, 0)
    if a.width is not None and a.task != "addition":
        raise ValueError("--width applies to the addition task only")
    check_int("--alphabet", a.alphabet, 2, optional=True)
    check_int("--length", a.length, 2, optional=True)
    if (a.alphabet is not None or a.length is not None) and a.task != "phop":
        raise ValueError("--alphabet and --length apply to the phop task only")
    check_int("--queries", a.queries, 0 if a.task == "phop" else 1, optional=True)
    if a.queries is not None and a.task not in ("phop", "chain"):
        raise ValueError("--queries applies to the phop and chain tasks only")
    if a.alphabet is not None and a.alphabet > len(PHOP_ALPHABET):
        n = len(PHOP_ALPHABET)
        raise ValueError(f"--alphabet={a.alphabet}: phop has {n} letters; choose 2..{n}")


def make_data(a, data: str) -> None:
    """`make`: write the data folder; `train`: write it unless `data` already holds one."""
    if a.cmd == "train" and os.path.isfile(os.path.join(data, "manifest.json")):
        print(f"using the existing data folder {data} (its own generator settings: see its manifest.json)")
        return
    out = a.out if a.cmd == "make" else data
    check_args(a)
    extra = (dict(width=a.width) if a.task == "addition"
             else dict(alphabet=a.alphabet, length=a.length, queries=a.queries) if a.task == "phop"
             else dict(queries=a.queries) if a.task == "chain" else {})
    seed = a.seed if a.cmd == "make" else a.data_seed
    man = write_task(a.task, out, a.n_train, a.n_val, seed, a.min_size, a.max_size,
                     overwrite=getattr(a, "overwrite", False), **extra)
    print(f"{out}: {a.task}, {man['splits']['train']['tokens']} train / {man['splits']['val']['tokens']} val "
          f"tokens, labels {man['topics']}")
    print("train it with: python -m gpu.train " + " ".join(train_args(a.task, out, f"runs/{a.task}")))


if __name__ == "__main__":
    sys.exit(main())
