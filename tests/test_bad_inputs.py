"""The bad-input catalogue: each case feeds one bad input or fault to a real entry point (signals: a subprocess) and
asserts a clear error naming the problem (or a correct recovery), no traceback, and that no file of an existing run
or data folder changed (its work folder, a copy of a run and a task folder, hashed before and after; recoveries
check what they changed instead; the bundled corpus is hashed too). docs/training.md states the count."""
import errno
import glob
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

import gpu.analyze
import gpu.bench
import gpu.data.__main__
import gpu.experiments
import gpu.generate
import gpu.tasks
import gpu.train
import gpu.train.loop
from gpu import checkpoint as ckpt
from gpu.data import BUNDLED_DIR
from gpu.train.metrics import MetricsLog  # /dev/full: every write fails with ENOSPC, as on a full disk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_RUN = os.path.join(ROOT, "tests", "fixtures", "main-1399fe0", "run")
SMALL = "--d-model=32 --n-head=2 --block-size=32 --batch-size=4 --eval-batches=2 --log-every=1 --no-progress --device=cpu"


def signal_run(args, sig):
    """gpu.train in a subprocess, sent `sig` once it has logged two steps; its output is replayed here."""
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--out="))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen([sys.executable, "-m", "gpu.train", *args], cwd=ROOT, env=env, stdout=so, stderr=se)
        metrics, deadline = os.path.join(out, "metrics.jsonl"), time.time() + 240
        while time.time() < deadline and proc.poll() is None and \
                (not os.path.exists(metrics) or open(metrics).read().count("\n") < 2):
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=120)
        so.seek(0), se.seek(0)
        sys.stdout.write(so.read()), sys.stderr.write(se.read())
    return proc.returncode


ENTRIES = {"train": gpu.train.main, "tasks": gpu.tasks.main, "data": gpu.data.__main__.main, "bench": gpu.bench.main,
           "experiments": gpu.experiments.main, "analyze": gpu.analyze.main, "generate": gpu.generate.main,
           "sigterm": lambda a: signal_run(a, signal.SIGTERM), "sigint": lambda a: signal_run(a, signal.SIGINT)}


# ----------------------------------------------------------------------------- what a case does to its copy first
def flip(path, at=1000, n=200):  # 200 bytes inverted, as by a bad disk
    data = open(path, "rb").read()
    open(path, "wb").write(data[:at] + bytes(x ^ 0xFF for x in data[at:at + n]) + data[at + n:])


def edit_manifest(w, **changes):
    m = json.load(open(w / "data/manifest.json"))
    m.update(changes)
    json.dump({k: v for k, v in m.items() if v != "DROP"}, open(w / "data/manifest.json", "w"))


def poke(path, pos, value, dtype):
    a = np.fromfile(path, dtype=dtype)
    a[pos] = value
    a.tofile(path)


def nan_loss_at_step_5(w, mp):
    real, calls = gpu.train.loop.accumulate_gradients, []
    def accumulate(s, call, step):  # noqa: E306
        loss, depth, answers = real(s, call, step)
        calls.append(1)
        return (float("nan") if len(calls) == 5 else loss), depth, answers
    mp.setattr(gpu.train.loop, "accumulate_gradients", accumulate)


def nan_weights_at_step_3(w, mp):  # a finite loss, NaN weights: only the check before saving can catch it
    real, calls = gpu.train.loop.optimizer_step, []
    def step(s, i):  # noqa: E306
        out = real(s, i)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(s.trainee.raw_model.parameters()).view(-1)[0] = float("nan")
        return out
    mp.setattr(gpu.train.loop, "optimizer_step", step)


CK4 = "run/checkpoints/step-0000004"
SETUPS = {
    "flip": lambda w, mp: flip(w / CK4 / "model.safetensors"),
    "flip-all": lambda w, mp: [flip(p + "/model.safetensors") for p in ckpt.list_checkpoints(w / "run")],
    "trunc-optim": lambda w, mp: open(w / CK4 / "optim.pt", "r+b").truncate(100),
    "drop-state": lambda w, mp: os.remove(w / CK4 / "state.json"),
    "bad-sums": lambda w, mp: (w / CK4 / "checksums.json").write_text("{"),
    "nan-legacy": lambda w, mp: (poke_weights(w / CK4), os.remove(w / CK4 / "checksums.json")),
    "no-ckpts": lambda w, mp: shutil.rmtree(w / "run/checkpoints"),
    "torn-metrics": lambda w, mp: open(w / "run/metrics.jsonl", "a").write('{"type": "tra'),
    "cfg-json": lambda w, mp: (w / "run/config.json").write_text("{not json"),
    "cfg-utf8": lambda w, mp: (w / "run/config.json").write_bytes(b"\xff\xfe{}"),
    "cfg-list": lambda w, mp: (w / "run/config.json").write_text("[]"),
    "notes": lambda w, mp: (w / "run/notes.txt").write_text("mine"),
    "legacy": lambda w, mp: (shutil.rmtree(w / "run"), shutil.copytree(LEGACY_RUN, w / "run")),
    "trunc-train": lambda w, mp: open(w / "data/train.bin", "r+b").truncate(2000),
    "trunc-unlabelled": lambda w, mp: (edit_manifest(w, topics=None), [os.remove(f) for f in glob.glob(str(w / "data/*.topics.bin"))],
                                       open(w / "data/train.bin", "r+b").truncate(2000)),
    "big-id": lambda w, mp: poke(w / "data/train.bin", 5, 60000, np.uint16),
    "bad-topic": lambda w, mp: poke(w / "data/train.topics.bin", 7, 200, np.uint8),
    "short-topics": lambda w, mp: open(w / "data/train.topics.bin", "r+b").truncate(100),
    "man-json": lambda w, mp: (w / "data/manifest.json").write_text("{"),
    "man-utf8": lambda w, mp: (w / "data/manifest.json").write_bytes(b"\xff{}"),
    "man-list": lambda w, mp: (w / "data/manifest.json").write_text("[1]"),
    "no-vocab": lambda w, mp: edit_manifest(w, vocab_size="DROP"),
    "str-vocab": lambda w, mp: edit_manifest(w, vocab_size="43"),
    "no-val": lambda w, mp: os.remove(w / "data/val.bin"),
    "odd-bytes": lambda w, mp: open(w / "data/train.bin", "ab").write(b"\0"),
    "empty-train": lambda w, mp: open(w / "data/train.bin", "r+b").truncate(0),
    "text-utf8": lambda w, mp: (w / "t.txt").write_bytes(b"ok \xff\xfe"),
    "disk-full-optim": lambda w, mp: mp.setattr(torch, "save", lambda obj, path, real=torch.save: real(obj, "/dev/full")),
    "disk-full-json": lambda w, mp: mp.setattr(ckpt, "atomic_write_json",
                                               lambda *a, **k: open("/dev/full", "wb", buffering=0).write(b"{}")),
    "disk-full-metrics": lambda w, mp: mp.setattr(MetricsLog, "__init__", lambda self, *a, real=MetricsLog.__init__, **k: (
        real(self, *a, **k), self.file and self.file.close(), setattr(self, "file", open("/dev/full", "a")))[0]),
    "bad-jsonl": lambda w, mp: (w / "bad.jsonl").write_text('{"text": "ok"}\n{bad json\n'),
    "bad-txt": lambda w, mp: (w / "bad.txt").write_bytes(b"ok \xff\xfe\n\nsecond\n"),
    "disk-full-task": lambda w, mp: mp.setattr(gpu.data.shards, "atomic_open", lambda path, mode: open("/dev/full", mode)),
    "perm": lambda w, mp: mp.setattr(gpu.train.rundir, "atomic_write_json",
                                     lambda *a, **k: (_ for _ in ()).throw(PermissionError(
                                         errno.EACCES, "Permission denied", str(w / "run/config.json")))),
    "nan-loss": nan_loss_at_step_5, "nan-weights": nan_weights_at_step_3,
}


def poke_weights(folder):
    from reference.weights import load_params, save_params
    params, cfg = load_params(folder / "model.safetensors")
    params[next(iter(params))][..., 0] = np.nan
    save_params(folder / "model.safetensors", params, cfg)


# ----------------------------------------------------------------------------- what a recovery must leave behind
def train_steps(run):
    return [r["step"] for r in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if r["type"] == "train"]


def resumed(last=6, aside=None):
    """The run finished at `last` from checkpoints that all load, logged each step once, and kept (did not delete)
    what it set aside."""
    def check(w):
        found = ckpt.list_checkpoints(w / "run")
        assert ckpt.step_of(found[-1]) == last and all(ckpt.load_checkpoint(p) for p in found)
        steps = train_steps(w / "run")
        assert steps == sorted(set(steps)) and steps[-1] == last
        assert aside is None or glob.glob(str(w / "run/checkpoints" / aside))
        assert not glob.glob(str(w / ".overwritten-*")) and not glob.glob(str(w / "run/checkpoints/.tmp-*"))
    return check


def stopped_and_saved(w):
    step = train_steps(w / "new")[-1]
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(w / "new")] == [step]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(w / "new"))[3]["step"] == step


def intact_checkpoints(*steps, run="new"):
    def check(w):
        found = ckpt.list_checkpoints(w / run)
        assert [ckpt.step_of(p) for p in found] == list(steps) and all(ckpt.load_checkpoint(p) for p in found)
        assert not glob.glob(str(w / run / "checkpoints/.tmp-*"))
    return check


def task_folder_replaced(w):
    assert json.load(open(w / "data/manifest.json"))["task"]["seed"] == 9 and not glob.glob(str(w / ".tmp-*"))


# ----------------------------------------------------------------------------- the catalogue
CHECKS = {"fell-back-4": resumed(aside="damaged-*/step-0000004"), "fell-back": resumed(aside="damaged-*"),
          "set-aside": resumed(aside="after-step-0000002-*/metrics.jsonl"), "resumed": resumed(), "resumed-at-4": resumed(4),
          "run-ckpts-2-4": intact_checkpoints(2, 4, run="run"), "ckpts-2-4": intact_checkpoints(2, 4),
          "ckpts-1-2": intact_checkpoints(1, 2), "no-ckpts-left": intact_checkpoints(), "stopped-and-saved": stopped_and_saved,
          "task-replaced": task_folder_replaced}


def table(text):
    """One case a line: id | argv | exit status | fragment of the message [| setup | check] ('-': none). `train`,
    `sigterm` and `sigint` get the small model's flags and, without --out, a new run folder; `train-as-saved` gets
    neither (a resume adopts the run's settings)."""
    cases = []
    for row in text.strip().splitlines():
        case_id, argv, code, fragment, setup, check = (row.split(" | ") + ["-", "-"])[:6]
        word, _, rest = argv.partition(" ")
        if word in ("train", "sigterm", "sigint"):
            argv = f"{word} {SMALL} " + ("" if "--out=" in rest else "--out={tmp}/new ") + rest
        argv = argv.replace("train-as-saved", "train")
        cases.append((case_id, argv, int(code), fragment, None if setup == "-" else setup, CHECKS.get(check)))
    return cases


CASES = table("""
train --lr=-1 | train --lr=-1 | 2 | --lr=-1.0 is invalid: expected a number > 0
train --lr=nan | train --lr=nan | 2 | --lr=nan is invalid: expected a finite number
train --beta1=1 | train --beta1=1 | 2 | --beta1=1.0 is invalid: expected a number in [0, 1)
train --beta2=1.5 | train --beta2=1.5 | 2 | --beta2=1.5 is invalid
train --min-lr-ratio=5 | train --min-lr-ratio=5 | 2 | --min-lr-ratio=5.0 is invalid: expected a number in [0, 1]
train --weight-decay=-0.1 | train --weight-decay=-0.1 | 2 | --weight-decay=-0.1 is invalid
train --grad-clip=nan | train --grad-clip=nan | 2 | --grad-clip=nan is invalid
train --max-steps=0 | train --max-steps=0 | 2 | --max-steps=0 is invalid: expected an int >= 1
train --batch-size=0 | train --batch-size=0 | 2 | --batch-size=0 is invalid
train --ckpt-every=0 | train --ckpt-every=0 | 2 | --ckpt-every=0 is invalid
train --keep-last=0 | train --keep-last=0 | 2 | --keep-last=0 is invalid
train --warmup=-1 | train --warmup=-1 | 2 | --warmup=-1 is invalid: expected an int >= 0
train --seed=-1 | train --seed=-1 | 2 | --seed=-1 is invalid
train --resume-from=-2 | train --resume-from=-2 | 2 | --resume-from=-2 is invalid
train --dtype=float16 | train --dtype=float16 | 2 | --dtype='float16' is invalid: expected float32, bfloat16
train --device=gpu | train --device=gpu | 2 | --device='gpu' is invalid: expected auto, cpu, cuda or cuda:N
train --preset=huge | train --preset=huge | 2 | unknown preset 'huge'
train unknown option | train --n-layerz=3 | 2 | unknown option --n-layerz=3 (did you mean --n-layer?)
train --max-steps=ten | train --max-steps=ten | 2 | --max-steps='ten': expected int
train --compile=maybe | train --compile=maybe | 2 | --compile is a flag and takes no value
train --halt-penalty=nan | train --halt-penalty=nan | 2 | --halt-penalty=nan is invalid: expected a finite number
train --step-scale-init=inf | train --step-scale-init=inf | 2 | --step-scale-init=inf is invalid
train --max-loops=0 | train --max-loops=0 | 2 | --max-loops=0 is invalid
train --n-head=3 | train --n-head=3 | 2 | --n-head=3 is invalid: expected a divisor of d_model=32
train --seq-len beyond the context | train --seq-len=64 | 2 | --seq-len=64 exceeds the model's block_size=32
train --vocab-size too small | train --vocab-size=100 | 2 | --vocab-size=100 is smaller than the tokenizer's
train --min-loops-start with fixed halting | train --halt=fixed --min-loops-start=2 --min-loops-warmup=5 | 2 | min_loops changes nothing
train unknown --ignore-topics | train --ignore-topics=nosuch | 2 | ['nosuch'] are not topics of
train --resume with --overwrite | train --resume --overwrite | 2 | --resume and --overwrite contradict
train --data missing | train --data={tmp}/nope | 2 | is not a folder
train --data is a run folder | train --data={run} | 2 | no manifest.json in
train --out is a file | train --out={run}/config.json | 2 | exists and is not a folder
train into an existing run | train --out={run} | 2 | already holds a run (config.json, metrics.jsonl, checkpoints): pass --resume
train into a run with no checkpoint | train --out={run} | 2 | already holds a run (config.json, metrics.jsonl) | no-ckpts
train into a data folder | train --out={data} | 2 | is not empty and holds no run
train --overwrite a data folder | train --out={data} --overwrite | 2 | is not empty and holds no run
train --overwrite a run holding other files | train --out={run} --overwrite | 2 | also holds files that are not the run's (notes.txt) | notes
train --resume changing --lr | train --out={run} --resume --max-steps=6 --lr=0.1 | 2 | would change what it computes: --lr=0.1 (the run has 0.003)
train --resume changing --d-model | train --out={run} --resume --max-steps=6 --d-model=48 | 2 | --d-model=48 (the run has 32)
train --resume with no run | train --resume --max-steps=6 | 2 | holds no run (no config.json); drop --resume
train --resume, config.json not JSON | train --out={run} --resume --max-steps=6 | 2 | config.json: not valid JSON | cfg-json
train --resume, config.json not UTF-8 | train --out={run} --resume --max-steps=6 | 2 | config.json: not valid JSON | cfg-utf8
train --resume, config.json a list | train --out={run} --resume --max-steps=6 | 2 | config.json: expected an object | cfg-list
train --resume with nothing left to train | train --out={run} --resume --max-steps=4 | 2 | --max-steps=4: the run's checkpoint is already at step 4
train --resume-from a missing step | train --out={run} --resume-from=3 | 2 | no checkpoint of that step; its checkpoints are at steps [2, 4]
train --resume, every checkpoint damaged | train --out={run} --resume --max-steps=6 | 2 | no intact checkpoint | flip-all
train --resume, config.json unwritable | train --out={run} --resume --max-steps=6 | 2 | Permission denied:  | perm
train data: truncated train.bin (unlabelled) | train --data={data} | 2 | holds 1000 tokens but manifest.json says 3717 | trunc-unlabelled
train data: truncated train.bin | train --data={data} | 2 | train.bin holds 1000 tokens but manifest.json says | trunc-train
train data: token id beyond the vocabulary | train --data={data} | 2 | token id 60000 at position 5 is not below manifest.json's vocab_size 43 | big-id
train data: topic label beyond the topics | train --data={data} | 2 | topic label 200 at position 7 | bad-topic
train data: topic labels shorter than tokens | train --data={data} | 2 | holds 100 topic labels (one per token) but manifest.json says 3717 | short-topics
train data: manifest not JSON | train --data={data} | 2 | manifest.json: not valid JSON | man-json
train data: manifest not UTF-8 | train --data={data} | 2 | manifest.json: not valid JSON | man-utf8
train data: manifest a list | train --data={data} | 2 | manifest.json: expected a JSON object | man-list
train data: manifest without vocab_size | train --data={data} | 2 | vocab_size=None is invalid | no-vocab
train data: manifest vocab_size a string | train --data={data} | 2 | vocab_size='43' is invalid | str-vocab
train data: val.bin missing | train --data={data} | 2 | missing shard | no-val
train data: train.bin odd size | train --data={data} | 2 | not a whole number of 2-byte tokens | odd-bytes
train data: train.bin empty | train --data={data} | 2 | empty shard | empty-train
train --resume falls back past flipped bytes | train --out={run} --resume --max-steps=6 | 0 | skipping a damaged checkpoint | flip | fell-back-4
train --resume falls back past a truncated optim.pt | train --out={run} --resume --max-steps=6 | 0 | optim.pt does not match its sha256 | trunc-optim | fell-back
train --resume falls back past a missing state.json | train --out={run} --resume --max-steps=6 | 0 | state.json is missing | drop-state | fell-back
train --resume falls back past damaged checksums | train --out={run} --resume --max-steps=6 | 0 | checksums.json is damaged | bad-sums | fell-back
train --resume falls back past NaN weights | train --out={run} --resume --max-steps=6 | 0 | non-finite weights | nan-legacy | fell-back
train --resume-from an older step | train --out={run} --resume-from=2 --max-steps=6 | 0 | newer checkpoint(s) and their metrics moved | - | set-aside
train --resume with no checkpoint starts over | train --out={run} --resume --max-steps=6 | 0 | starting over from step 0 | no-ckpts | resumed
train --resume over a torn metrics line | train --out={run} --resume --max-steps=6 | 0 | is not a JSON record (torn write?) | torn-metrics | resumed
train --resume adopts the saved settings | train-as-saved --out={run} --resume --max-steps=6 | 0 | resuming at step 4 | - | resumed
train --resume a checkpoint without checksums | train-as-saved --out={run} --resume --max-steps=4 | 0 | loading it unverified | legacy | resumed-at-4
train --overwrite replaces a run | train --out={run} --overwrite --max-steps=6 --ckpt-every=3 | 0 | replaced the run | - | resumed
train disk full writing optim.pt | train --out={run} --resume --max-steps=6 | 2 | unexpected pos | disk-full-optim | run-ckpts-2-4
train disk full writing state.json | train --out={run} --resume --max-steps=6 | 2 | could not write checkpoint | disk-full-json | run-ckpts-2-4
train disk full writing metrics | train --max-steps=2 | 2 | metrics.jsonl (No space left on device) | disk-full-metrics | no-ckpts-left
train NaN loss | train --max-steps=8 --ckpt-every=2 --eval-every=100 | 1 | loss became nan at step 4 | nan-loss | ckpts-2-4
train NaN weights, finite loss | train --max-steps=8 --ckpt-every=1 --eval-every=100 | 1 | weights became non-finite by step 3 | nan-weights | ckpts-1-2
train SIGTERM saves and exits 143 | sigterm --max-steps=100000 --eval-every=100000 --ckpt-every=100000 | 143 | stopped by SIGTERM after step | - | stopped-and-saved
train SIGINT saves and exits 130 | sigint --max-steps=100000 --eval-every=100000 --ckpt-every=100000 | 130 | stopped by SIGINT after step | - | stopped-and-saved
tasks make --overwrite replaces a data folder | tasks make parity --out {data} --overwrite --seed 9 --n-train 50 --n-val 9 | 0 | parity | - | task-replaced
tasks make into a data folder | tasks make parity --out {data} | 2 | already holds a data folder: pass --overwrite
tasks make into the bundled corpus | tasks make parity --out {bundled} --overwrite | 2 | is the bundled corpus
tasks make into a run folder | tasks make parity --out {run} | 2 | exists and is not a data folder
tasks make onto a file | tasks make parity --out {run}/config.json | 2 | exists and is not a folder
tasks make --n-train 0 | tasks make parity --out {tmp}/new --n-train 0 | 2 | --n-train=0: expected an int >= 1
tasks make --min-size > --max-size | tasks make parity --out {tmp}/new --min-size 5 --max-size 2 | 2 | need 1 <= min_size <= max_size
tasks make --min-size 0 | tasks make parity --out {tmp}/new --min-size 0 | 2 | --min-size=0: expected an int >= 1
tasks make --width on parity | tasks make parity --out {tmp}/new --width 3 | 2 | --width applies to the addition task only
tasks make --seed -1 | tasks make parity --out {tmp}/new --seed -1 | 2 | --seed=-1: expected an int >= 0
tasks make an unknown task | tasks make division --out {tmp}/new | 2 | invalid choice: 'division'
tasks make on a full disk | tasks make parity --out {tmp}/new --n-train 5 --n-val 5 | 2 | train.bin (No space left on device) | disk-full-task
tasks train into an existing run | tasks train parity --data {data} --out {run} | 2 | already holds a run
data build-bundled over the bundled corpus | data build-bundled | 2 | already holds a data folder: pass --overwrite
data openwebtext into a data folder | data openwebtext --out {data} --files {tmp}/x.jsonl | 2 | already holds a data folder
data fineweb-edu into a run folder | data fineweb-edu --out {run} --files {tmp}/x.jsonl | 2 | not a data folder
data --val-fraction 1.5 | data openwebtext --out {tmp}/new --val-fraction 1.5 | 2 | --val-fraction=1.5: expected a finite number 0 < x < 1
data --batch-size 0 | data openwebtext --out {tmp}/new --batch-size 0 | 2 | --batch-size=0: expected an int >= 1
data --num-proc 0 | data fineweb-edu --out {tmp}/new --num-proc 0 | 2 | --num-proc=0
data build-bundled --max-chars 0 | data build-bundled --out {tmp}/new --max-chars 0 | 2 | --max-chars=0
data --files, a line not JSON | data openwebtext --out {tmp}/new --files {tmp}/bad.jsonl {local} | 2 | bad.jsonl: line 2 is not a JSON object | bad-jsonl
data --files, text not UTF-8 | data openwebtext --out {tmp}/new --files {tmp}/bad.txt {local} | 2 | bad.txt: not UTF-8 text (line 1 | bad-txt
data bundled --dir missing | data bundled --dir {tmp}/nope | 2 | no manifest.json in
data bundled --dir, manifest not JSON | data bundled --dir {data} | 2 | manifest.json: not valid JSON | man-json
data bundled --dir, manifest a list | data bundled --dir {data} | 2 | expected a JSON object | man-list
data bundled --dir, manifest fields missing | data bundled --dir {data} | 2 | not a manifest gpu.data wrote | no-vocab
bench --steps 0 | bench train --steps 0 | 2 | --steps=0: expected an int >= 1
bench --warmup -1 | bench train --warmup -1 | 2 | --warmup=-1: expected an int >= 0
bench --peak-flops nan | bench train --peak-flops nan | 2 | --peak-flops=nan: expected a finite number 0 < x
bench --max-loops 0 | bench train --max-loops 0 | 2 | --max-loops=0
bench --halt unknown | bench train --halt sometimes --skip-reference | 2 | halt='sometimes' is invalid
bench --device tpu | bench train --device tpu --skip-reference | 2 | --device='tpu': expected auto, cpu
iso-flop --looped-steps 0 | experiments iso-flop --out {tmp}/new --looped-steps 0 | 2 | --looped-steps=0: expected an int >= 1
iso-flop --lr nan | experiments iso-flop --out {tmp}/new --lr nan | 2 | --lr=nan: expected a finite number 0 < x
iso-flop --seeds a,b | experiments iso-flop --out {tmp}/new --seeds a,b | 2 | --seeds='a,b': expected a comma list
iso-flop --seeds -1 | experiments iso-flop --out {tmp}/new --seeds=-1 | 2 | --seeds='-1'
iso-flop --eval-points 0 | experiments iso-flop --out {tmp}/new --eval-points 0 | 2 | --eval-points=0
iso-flop --loops 0 | experiments iso-flop --out {tmp}/new --loops 0 | 2 | --loops=0
iso-flop --data missing | experiments iso-flop --out {tmp}/new --data {tmp}/nope | 2 | no manifest.json in
analyze --windows 0 | analyze calibration {run} --windows 0 | 2 | --windows=0: expected an int >= 1
analyze --batch-size 0 | analyze calibration {run} --batch-size 0 | 2 | --batch-size=0
analyze --boot 0 | analyze depth-by-topic {run} --boot 0 | 2 | --boot=0
analyze --tol nan | analyze calibration {run} --tol nan | 2 | --tol=nan
analyze --thresholds abc | analyze extrapolate {run} --thresholds abc | 2 | --thresholds='abc': expected a comma list
analyze --loops 0..2 | analyze extrapolate {run} --loops 0..2 | 2 | loop counts must be >= 1
analyze convergence --loops 0 | analyze convergence {run} --loops 0 | 2 | --loops=0
analyze --text missing | analyze depth-map {run} --text {tmp}/nope.txt | 2 | No such file or directory
analyze --text not UTF-8 | analyze depth-map {run} --text {tmp}/t.txt | 2 | is not UTF-8 text | text-utf8
analyze a missing run | analyze calibration {tmp}/nope | 2 | does not exist
analyze a flipped checkpoint | analyze calibration {run} | 2 | does not match its sha256 | flip
analyze NaN weights | analyze calibration {run} | 2 | holds non-finite weights | nan-legacy
analyze config.json not JSON | analyze calibration {run} | 2 | config.json: not valid JSON | cfg-json
analyze a run with no checkpoint | analyze calibration {run} | 2 | has no checkpoint yet | no-ckpts
generate --max-new-tokens 0 | generate {run} --prompt x --max-new-tokens 0 | 2 | --max-new-tokens=0
generate --temperature nan | generate {run} --prompt x --temperature nan | 2 | --temperature=nan
generate --top-k 0 | generate {run} --prompt x --top-k 0 | 2 | --top-k=0
generate --device tpu | generate {run} --prompt x --device tpu | 2 | --device='tpu'
generate a flipped checkpoint | generate {run} --prompt x | 2 | does not match its sha256 | flip
generate config.json not JSON | generate {run} --prompt x | 2 | config.json: not valid JSON | cfg-json
generate an empty prompt | generate {run} --prompt= | 2 | the prompt is empty
""")


# ----------------------------------------------------------------------------- the runner
def snapshot(root) -> dict:  # every folder (as "") and file (as its sha256) below root
    return {os.path.relpath(os.path.join(d, f), root) + ("" if f else "/"): f and hashlib.sha256(
        open(os.path.join(d, f), "rb").read()).hexdigest() for d, _, files in os.walk(root) for f in ["", *files]}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    argv = f"--out={root}/run {SMALL} --max-steps=4 --ckpt-every=2 --eval-every=2 --keep-last=3".split()
    assert gpu.train.main(argv) == 0
    assert gpu.tasks.main(["make", "parity", "--out", str(root / "data"), "--n-train", "300", "--n-val", "40"]) == 0
    return root


@pytest.mark.parametrize("case_id, argv, code, fragment, setup, check", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, code, fragment, setup, check, golden, tmp_path, monkeypatch, capsys):
    for name in ("run", "data"):
        shutil.copytree(golden / name, tmp_path / name)
    bundled = snapshot(BUNDLED_DIR)
    if setup:
        SETUPS[setup](tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    local = f"--tokenizer {BUNDLED_DIR}/tokenizer.json --cache-dir {golden}/hf"  # no download, cache outside the copy
    words = [w.format(tmp=tmp_path, run=tmp_path / "run", data=tmp_path / "data", bundled=BUNDLED_DIR)
             for w in shlex.split(argv.replace("{local}", local))]
    capsys.readouterr()
    try:
        got = ENTRIES[words[0]](words[1:])
    except SystemExit as exit_:  # argparse's own usage errors
        got = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert got == code and fragment in out + err, f"exit {got}\n{out[-1500:]}\n{err[-1500:]}"
    if code not in (0, 130, 143):
        assert sum(line.startswith("error: ") or ": error: " in line for line in err.splitlines()) == 1, err
    if check is None:
        assert snapshot(tmp_path) == before, "a file of the work folder changed"
    else:
        check(tmp_path)
        data = [{k: v for k, v in snap.items() if k.startswith("data")} for snap in (before, snapshot(tmp_path))]
        assert "{data}" in argv or data[0] == data[1], "the data folder changed"
    assert snapshot(BUNDLED_DIR) == bundled, "the bundled corpus changed"


def test_the_catalogue_has_75_cases_or_more_with_unique_names():
    assert len(CASES) >= 75 and len({c[0] for c in CASES}) == len(CASES)
