"""The lm-evaluation-harness model `adaloop` (issue 14, item 4), offline, on the tasks shipped in gpu/eval/tasks: the
harness's per-item log-likelihoods equal the project's own computation (gpu.probe.collect, what gpu.analyze runs),
its perplexity equals the one from those per-token losses, generate_until is gpu.generate's greedy decoding, and the
command line runs from a checkout. Skipped, with the reason printed, where lm-eval is not installed."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import reference as R
from gpu.convert import write_model_folder
from gpu.data import BUNDLED_DIR, load_tokenizer
from gpu.generate import generate
from gpu.probe import collect
from reference.weights import load_params

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from gpu.eval import TASKS_DIR  # noqa: E402
from gpu.eval.build_tasks import build  # noqa: E402
from gpu.eval.harness import AdaloopLM  # noqa: E402
from gpu.eval.tasks.adaloop_data import rows  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_RUN = os.path.join(ROOT, "tests", "fixtures", "main-1399fe0", "run")
N = 6  # items per task (--limit): a few of each topic's first documents


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An adaptive (ACT, up to 3 loops) model with the bundled tokenizer and a context (128) that holds every
    cloze item in one window, written as a gpu.convert model folder (a run= source)."""
    cfg = R.LoopConfig(vocab_size=2048, block_size=128, d_model=16, n_head=2, n_kv_head=1, mlp_ratio=2, max_loops=3,
                       halt="act", halt_bias_init=-1.0, init_std=0.2)
    out = tmp_path_factory.mktemp("eval") / "model"
    write_model_folder(out, R.init_params(cfg, 3), cfg, "test", tokenizer=os.path.join(BUNDLED_DIR, "tokenizer.json"))
    return str(out)


@pytest.fixture(scope="module")
def results(model_dir):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return lm_eval.simple_evaluate(model="adaloop", model_args=f"run={model_dir}", device="cpu", batch_size=8,
                                   tasks=["adaloop_cloze", "adaloop_ppl", "adaloop_next_word"], limit=N,
                                   task_manager=TaskManager(include_path=TASKS_DIR), log_samples=True)


def own_logprobs(model_dir, pairs):
    """log p(continuation | context) the project's own way: one window of the last block_size + 1 ids (the context
    keeps its last tokens), gpu.probe.collect's per-token loss summed over the continuation."""
    params, cfg = load_params(os.path.join(model_dir, "model.safetensors"))
    out = []
    for ctx, cont in pairs:
        ids = np.asarray(ctx + cont)[-(cfg.block_size + 1):]
        loss = collect(params, cfg, ids[None, :-1], ids[None, 1:], keep=())["loss"][0]
        out.append(-float(loss[-len(cont):].sum()))
    return out


def test_shipped_task_data_is_what_the_builder_makes():
    """gpu/eval/tasks/bundled_val.jsonl is `python -m gpu.eval.build_tasks`'s output on the bundled corpus."""
    assert rows() == build()
    assert {r["topic"] for r in rows()} == {"literature", "dialogue", "code", "technical", "math"}


def test_cloze_loglikelihoods_equal_the_projects_own(results, model_dir):
    tok = load_tokenizer(BUNDLED_DIR)
    samples = results["samples"]["adaloop_cloze"]
    assert len(samples) == N
    for s in samples:
        pairs = []
        for context, choice in (a for a in s["arguments"]):
            whole, ctx = tok.encode(context + choice), tok.encode(context)
            pairs.append((ctx, whole[len(ctx):]))  # the harness's encoding: the pair's tokens, split after ctx
        got = [ll for ((ll, _),) in s["resps"]]
        np.testing.assert_allclose(got, own_logprobs(model_dir, pairs), rtol=1e-5, atol=1e-4)
    acc = np.mean([np.argmax([ll for ((ll, _),) in s["resps"]]) == s["target"] for s in samples])
    assert results["results"]["adaloop_cloze"]["acc,none"] == pytest.approx(acc)


def test_perplexity_equals_the_one_from_per_token_losses(results, model_dir):
    """Each document from <|endoftext|> in the harness's rolling windows of 128 predictions; summed per-token
    losses of gpu.probe.collect over the same windows give the harness's token perplexity and bits per byte."""
    tok = load_tokenizer(BUNDLED_DIR)
    docs = rows()[:N]
    nll, n_tokens = 0.0, 0
    for doc in docs:
        ids = tok.encode(doc["text"])
        assert len(ids) == doc["n_tokens"] and len(ids) > 128  # several windows per document
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, tok.eot_id, 128, 1)]
        nll -= sum(own_logprobs(model_dir, windows))
        n_tokens += len(ids)
    ppl = results["results"]["adaloop_ppl"]
    assert ppl["token_perplexity,none"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    assert ppl["bits_per_byte,none"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-5)


def test_generate_until_is_greedy_decoding(results, model_dir):
    lm = AdaloopLM(run=model_dir, device="cpu")
    for s in results["samples"]["adaloop_next_word"]:
        context, kwargs = s["arguments"][0]
        ids = lm.tok_encode(context)[-128:]
        out, _ = generate(lm.model, torch.tensor([ids]), kwargs["max_gen_toks"], use_cache=False)
        new = out[0, len(ids):].tolist()
        text = lm.tok_decode(new[:new.index(lm.eot_token_id)] if lm.eot_token_id in new else new)
        assert s["resps"][0][0] == text.split("\n")[0]


def test_model_args_loops_and_threshold(model_dir):
    lm = AdaloopLM(run=model_dir, loops=6, halt_threshold=0.2, device="cpu")
    assert (lm.cfg.max_loops, lm.cfg.act_eps, lm.cfg.halt) == (6, 0.2, "act")
    assert get_model("adaloop") is AdaloopLM  # registered in the harness's registry on import
    with pytest.raises(ValueError, match="loops=0"):
        AdaloopLM(run=model_dir, loops=0)
    with pytest.raises(ValueError, match="needs run=RUN"):
        AdaloopLM()


def test_long_continuations_are_scored_in_windows(model_dir):
    """A continuation longer than the context is the sum over rolling windows, not truncated."""
    lm = AdaloopLM(run=model_dir, device="cpu")
    ids = lm.tok_encode(rows()[0]["text"])[:300]
    (ll, _), = lm.score([(ids[:1], ids[1:])])
    windows = lm.windows(ids[:1], ids[1:])
    assert [len(c) for _, c in windows] == [128, 128, 43] and len(windows[2][0]) + 43 - 1 == 128  # full context
    assert ll == pytest.approx(sum(own_logprobs(model_dir, windows)), rel=1e-6)


def test_pyproject_exposes_the_model_to_harnesses_with_plugin_discovery():
    """The `lm_eval.models` entry point (harness releases with plugin discovery) names the registered class."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        entry = tomllib.load(f)["project"]["entry-points"]["lm_eval.models"]["adaloop"]
    module, _, name = entry.partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is AdaloopLM


def test_command_line_runs_a_run_folder_offline():
    """`python -m gpu.eval` (the harness's CLI with the model registered and the shipped tasks on its path) on a
    gpu.train run folder, in a fresh process."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "gpu.eval", "--model", "adaloop", "--model_args", f"run={FIXTURE_RUN}",
                           "--tasks", "adaloop_cloze", "--limit", "2", "--device", "cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "adaloop_cloze" in proc.stdout and "acc" in proc.stdout
