"""gpu.tasks: the synthetic generators are right (answers, difficulty labels), seeded, and write a data folder the
data tools and `gpu.train` read. Each check recomputes the ground truth independently of the generator."""
import json
import os

import numpy as np
import pytest

from gpu import tasks
from gpu.data import load_split, load_tokenizer, sample_batch, topic_names


def digits_lsb(s):
    return [int(c) for c in reversed(s)]


def brute_carry_chain(a, b, place):
    """Column addition by hand: the carries out of every place, then the run arriving at `place`."""
    carry, outs = 0, []
    for x, y in zip(a, b):
        carry = (x + y + carry) // 10
        outs.append(carry)
    run = 0
    for j in range(place - 1, -1, -1):
        if not outs[j]:
            break
        run += 1
    return run


def brute_lookback(a, b, place):
    """Fewest places below `place` whose digits fix the carry into it, whatever the digits further down:
    try every completion of the lower places."""
    if place == 0:
        return 0
    for m in range(1, place + 1):
        lo = place - m  # places lo..place-1 known; below lo: the extreme completions give the carry range
        carries = set()
        for low_carry in ((0, 1) if lo > 0 else (0,)):
            c = low_carry
            for j in range(lo, place):
                c = (a[j] + b[j] + c) // 10
            carries.add(c)
        if len(carries) == 1:
            return m
    return place


@pytest.mark.parametrize("seed,width", [(0, 0), (1, 0), (2, 8)])
def test_addition_answers_and_difficulty_labels(seed, width):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        n = int(rng.integers(1, 9))
        prompt, answer, m = tasks.addition_problem(rng, n, width)
        a_str, b_str = prompt[:-1].split("+")
        w = max(n, width)
        assert len(a_str) == len(b_str) == w and len(answer) == w + 1
        assert int(answer) == int(a_str) + int(b_str)
        assert all(len(str(int(v))) == n or n == 1 for v in (a_str, b_str))  # n significant digits
        a, b = digits_lsb(a_str), digits_lsb(b_str)
        places = list(range(w, -1, -1))  # answer order: most significant first
        assert m["carry_chain"] == [brute_carry_chain(a, b, p) for p in places]
        assert m["lookback"] == [brute_lookback(a, b, p) for p in places]
        assert m["longest_carry_chain"] == [max(m["carry_chain"])] * (w + 1)
        assert m["operand_length"] == [n] * (w + 1)
        leading_zeros = len(answer) - len(answer.lstrip("0")) if int(answer) else len(answer) - 1
        assert m["significant"] == [0] * leading_zeros + [1] * (len(answer) - leading_zeros)


def test_addition_folder_has_one_width():
    probs = tasks.problems("addition", 50, seed=0, min_size=1, max_size=5)
    assert {len(p + a) for p, a, _ in probs} == {5 + 1 + 5 + 1 + 6}
    assert len({len(p) for p, _, _ in tasks.problems("addition", 50, 0, 1, 5, width=0)}) > 1


def test_known_addition_examples():
    # 999 + 001 = 1000: carries out of places 0, 1, 2 -> chains 3, 2, 1, 0 arriving at places 3..0
    a, b = digits_lsb("999"), digits_lsb("001")
    assert [brute_carry_chain(a, b, p) for p in (3, 2, 1, 0)] == [3, 2, 1, 0]
    # place sums 10, 9, 9: places 2 and 1 only pass a carry on, so place 3 must read down to place 0
    assert [brute_lookback(a, b, p) for p in (3, 2, 1, 0)] == [3, 2, 1, 0]
    a, b = digits_lsb("995"), digits_lsb("004")  # sums 9, 9, 9: the carry into place 3 needs every place
    assert brute_lookback(a, b, 3) == 3
    assert tasks.carries(a, b) == [0, 0, 0]


def test_parity_and_phop_answers():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 17))
        prompt, answer, m = tasks.parity_problem(rng, n)
        bits = prompt[:-1]
        assert len(bits) == n and set(bits) <= {"0", "1"} and answer == str(bits.count("1") % 2)
        assert m == dict(length=[n], ones=[bits.count("1")])
    for _ in range(200):
        p = int(rng.integers(1, 5))
        prompt, answer, m = tasks.phop_problem(rng, p)
        hops, seq = prompt[:-1].split(":")
        assert int(hops) == p and m == dict(hops=[p]) and len(seq) == 24
        i = len(seq) - 1  # the definition, walked by hand
        for _ in range(p):
            j = max(k for k in range(i) if seq[k] == seq[i])
            i = j + 1
        assert answer == seq[i]
    assert tasks.phop_answer("abab", 1) == "a"  # the token after the previous "b"
    assert tasks.phop_answer("abcd", 1) is None


def test_phop_alphabet_and_length(tmp_path):
    rng = np.random.default_rng(4)
    for alphabet, length in ((2, 5), (26, 24), (26, 40)):
        for _ in range(50):
            prompt, answer, _ = tasks.phop_problem(rng, int(rng.integers(1, 5)), length=length, alphabet=alphabet)
            seq = prompt[:-1].split(":")[1]
            assert len(seq) == length and set(seq) <= set(tasks.PHOP_ALPHABET[:alphabet]) and answer in seq
    for _ in range(100):  # the multi-query layout: each answer is the p-hop answer of seq + its letter
        prompt, answer, m = tasks.phop_problem(rng, 3, length=12, queries=4)
        seq, first = prompt.split("|")
        text = first + answer
        asked = [text[i:i + 4] for i in range(0, len(text), 4)]
        assert len(asked) == 4 and all(q[2] == "=" for q in asked)
        for p, x, _, a in asked:
            assert 1 <= int(p) <= 3 and a == tasks.phop_answer(seq + x, int(p))
        assert m["hops"] == [v for p, *_ in asked for v in (None, None, None, int(p))][3:]  # answers only
        assert len(m["hops"]) == len(answer)
    out = str(tmp_path / "phop")  # the CLI writes the generator settings into the manifest's command
    assert tasks.main(["make", "phop", "--out", out, "--n-train", "20", "--n-val", "5", "--alphabet", "26",
                       "--length", "30"]) == 0
    with open(os.path.join(out, "manifest.json")) as f:
        task = json.load(f)["task"]
    assert task["alphabet"] == 26 and task["length"] == 30 and "--alphabet 26 --length 30" in task["command"]


def resolve_chain(prompt: str, name: str) -> tuple[str, int]:
    """(value, lookups) of variable `name` in a chain prompt, by walking the bindings by hand."""
    bindings = dict(s.split("=") for s in prompt[:-1].split(":"))
    lookups = 0
    while not name.isdigit():
        name, lookups = bindings[name], lookups + 1
    return name, lookups


def test_chain_answers_and_per_answer_hops():
    rng = np.random.default_rng(5)
    for _ in range(200):
        hops = int(rng.integers(1, 7))
        prompt, answer, m = tasks.chain_problem(rng, hops)
        assert prompt.endswith("|") and len(answer) == 3 * 4 and len(m["hops"]) == len(answer)
        lhs = [s.split("=")[0] for s in prompt[:-1].split(":")]
        assert len(lhs) == len(set(lhs))  # every variable bound once
        for q in range(4):
            name, sep, value = answer[3 * q: 3 * q + 3]
            assert sep == "?" and m["hops"][3 * q: 3 * q + 2] == [None, None]
            assert resolve_chain(prompt, name) == (value, m["hops"][3 * q + 2])
            assert 1 <= m["hops"][3 * q + 2] <= hops
    with pytest.raises(ValueError, match="max-size"):
        tasks.chain_problem(rng, 7)  # 4 x 7 names > 26 letters


def test_chain_folder_labels_only_the_answer_digits(tmp_path):
    out = str(tmp_path / "chain")
    tasks.write_task("chain", out, n_train=20, n_val=10, seed=1, min_size=1, max_size=3)
    names = topic_names(out)
    assert names == ["prompt", "end", "hop0", "hop1", "hop2", "hop3"]
    tokens, topics, _ = load_split(out, "val")
    hops = np.memmap(tasks.measure_path(out, "val", "hops"), dtype=np.uint8, mode="r")
    tok = load_tokenizer(out)
    text = [tok.decode([int(t)]) for t in tokens]  # one string per token
    answer_digits = [i for i, n in enumerate(topics) if names[n].startswith("hop")]
    assert answer_digits and all(text[i].isdigit() and text[i - 1] == "?" for i in answer_digits)
    assert all(hops[i] != tasks.NA for i in answer_digits) and int((hops != tasks.NA).sum()) == len(answer_digits)


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_generators_are_seeded(task):
    a = tasks.problems(task, 50, seed=7)
    assert a == tasks.problems(task, 50, seed=7)
    assert a != tasks.problems(task, 50, seed=8)


def test_errors():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.problems("division", 3, 0)
    with pytest.raises(ValueError, match="min_size"):
        tasks.problems("addition", 3, 0, min_size=5, max_size=2)
    with pytest.raises(ValueError, match="not in the task vocabulary"):
        tasks.encode("12*3")


@pytest.fixture(scope="module")
def addition_folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tasks") / "addition")
    tasks.write_task("addition", out, n_train=300, n_val=50, seed=3, min_size=1, max_size=4)
    return out


def test_folder_loads_and_labels_match_the_problems(addition_folder):
    names = topic_names(addition_folder)
    assert names[:2] == ["prompt", "end"] and all(n.startswith("carry") for n in names[2:])
    meta = json.load(open(os.path.join(addition_folder, "manifest.json")))
    assert meta["vocab_size"] == len(tasks.vocab()) and meta["task"]["label_measure"] == "carry_chain"
    tok = load_tokenizer(addition_folder)
    assert tok.vocab_size == meta["vocab_size"] and tok.eot_id == 0
    probs = tasks.problems("addition", 50, seed=3 * 1000 + tasks.SPLIT_SEED["val"], min_size=1, max_size=4)
    tokens, topics, _ = load_split(addition_folder, "val")
    chains = np.memmap(tasks.measure_path(addition_folder, "val", "carry_chain"), dtype=np.uint8, mode="r")
    text = tok.decode(np.asarray(tokens))
    assert text == "".join(p + a + tasks.EOT for p, a, _ in probs)
    pos = 0
    for prompt, answer, m in probs:
        span = slice(pos, pos + len(prompt) + len(answer) + 1)
        labels = [names[i] for i in topics[span]]
        assert labels == ["prompt"] * len(prompt) + [f"carry{c}" for c in m["carry_chain"]] + ["end"]
        assert chains[span].tolist() == [tasks.NA] * len(prompt) + m["carry_chain"] + [tasks.NA]
        pos = span.stop
    assert pos == len(tokens)
    x, y, t = sample_batch(*load_split(addition_folder, "train")[:2], 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == t.shape == (4, 16)


def test_write_task_is_reproducible_and_leaves_no_temporary_folder(addition_folder, tmp_path):
    again = str(tmp_path / "again")
    tasks.write_task("addition", again, n_train=300, n_val=50, seed=3, min_size=1, max_size=4)
    for f in ("train.bin", "val.bin", "train.topics.bin", "val.difficulty.lookback.bin"):
        assert open(os.path.join(again, f), "rb").read() == open(os.path.join(addition_folder, f), "rb").read()
    with pytest.raises(ValueError, match="already holds a data folder: pass --overwrite"):
        tasks.write_task("addition", again, n_train=20, n_val=5, seed=4)  # never replaced by accident
    tasks.write_task("addition", again, n_train=20, n_val=5, seed=4, overwrite=True)  # replaced in one rename
    assert json.load(open(os.path.join(again, "manifest.json")))["splits"]["val"]["documents"] == 5
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    (tmp_path / "notdata").mkdir()
    (tmp_path / "notdata" / "mine.txt").write_text("not data")
    with pytest.raises(ValueError, match="not a data folder"):
        tasks.write_task("parity", str(tmp_path / "notdata"), n_train=5, n_val=5, overwrite=True)
    (tmp_path / "empty").mkdir()  # an empty folder is filled
    tasks.write_task("parity", str(tmp_path / "empty"), n_train=5, n_val=5)
    assert os.path.isfile(tmp_path / "empty" / "manifest.json")


def test_cli_make_and_train_args(tmp_path, capsys):
    out = str(tmp_path / "parity")
    assert tasks.main(["make", "parity", "--out", out, "--n-train", "40", "--n-val", "10", "--max-size", "6"]) == 0
    assert "python -m gpu.train" in capsys.readouterr().out
    assert topic_names(out) == ["prompt", "end"] + [f"len{i}" for i in range(7)]
    from gpu.config import parse_args
    tc, mc, explicit = parse_args(tasks.train_args("addition", "runs/tasks/addition", "runs/addition"))
    assert tc.data == "runs/tasks/addition" and mc.max_loops == tasks.PRESETS["addition"]["model"]["max_loops"]
    assert [tasks.option("rope", False), tasks.option("random_loops", True), tasks.option("lr", 0.1)] == \
        ["--no-rope", "--random-loops", "--lr=0.1"]  # booleans are gpu.train flags
    tc, mc, _ = parse_args([tasks.option("rope", False), tasks.option("random_loops", True), "--halt=fixed"])
    assert not mc.rope and tc.random_loops


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "notdata").mkdir()
    (tmp_path / "notdata" / "mine.txt").write_text("not data")
    assert tasks.main(["make", "parity", "--out", str(tmp_path / "notdata"), "--n-train", "5", "--n-val", "5"]) == 2
    assert tasks.main(["make", "parity", "--out", str(tmp_path / "p"), "--width", "3"]) == 2
    assert tasks.main(["make", "parity", "--out", str(tmp_path / "p"), "--alphabet", "3"]) == 2
    assert tasks.main(["make", "phop", "--out", str(tmp_path / "p"), "--alphabet", "27"]) == 2
    assert tasks.main(["make", "phop", "--out", str(tmp_path / "p"), "--length", "1"]) == 2
    assert tasks.main(["make", "parity", "--out", str(tmp_path / "p"), "--queries", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {str(tmp_path / 'notdata')!r} exists and is not a data folder: choose another --out "
                   f"(nothing was written)", "error: --width applies to the addition task only",
                   "error: --alphabet and --length apply to the phop task only",
                   "error: --alphabet=27: phop has 26 letters; choose 2..26", err[-2],
                   "error: --queries applies to the phop and chain tasks only"]
    assert "--length" in err[-2] and ">= 2" in err[-2]
    assert sorted(os.listdir(tmp_path)) == ["notdata"]  # nothing written, no temporary folder left


def test_ignore_topics_masks_prompt_targets_in_training_and_eval(addition_folder, tmp_path):
    """--ignore-topics=prompt: every prompt target becomes -1 and nothing else changes; the eval scores the rest."""
    from gpu.train import ignored_topic_ids, load_data, mask_targets, scored_tokens
    from gpu.config import TrainConfig
    tc = TrainConfig(data=addition_folder, ignore_topics="prompt", out=str(tmp_path / "r"))
    data = load_data(tc)
    assert data["ignore_ids"].tolist() == [0]
    x, y, t = sample_batch(data["train"], data["train_topics"], 8, 16, np.random.default_rng(1))
    masked = mask_targets(y, t, data["ignore_ids"])
    assert (masked[t == 0] == -1).all() and (masked[t != 0] == y[t != 0]).all() and (t == 0).any()
    kept = scored_tokens(data, "val")
    assert len(kept) == int((np.asarray(data["val_topics"]) != 0).sum()) < len(data["val"])
    assert mask_targets(y, None, data["ignore_ids"]) is y
    with pytest.raises(ValueError, match=r"\['promt'\] are not topics"):
        ignored_topic_ids("promt", data["topics"], addition_folder)
    with pytest.raises(ValueError, match="no topic labels"):
        ignored_topic_ids("prompt", [], "somewhere")


def test_ignore_topics_val_ce_is_the_mean_over_scored_targets(addition_folder, tmp_path):
    """The eval's val_ce equals the cross-entropy of the model over the unmasked targets only, recomputed here."""
    import torch
    from gpu.config import TrainConfig
    from gpu.data import fixed_windows
    from gpu.model import LoopedTransformer
    from gpu.train import evaluate, load_data, mask_targets
    from reference import get_preset
    mc = get_preset("tiny", d_model=32, n_head=2, block_size=16, vocab_size=len(tasks.vocab()))
    tc = TrainConfig(data=addition_folder, ignore_topics="prompt", batch_size=4, eval_batches=2, out=str(tmp_path))
    data = load_data(tc)
    torch.manual_seed(0)
    model = LoopedTransformer(mc)
    ev = evaluate(model, mc, tc, data, torch.device("cpu"), 16)
    X, Y, T = fixed_windows(data["val"], data["val_topics"], 8, 16)
    Y = mask_targets(Y, T, data["ignore_ids"])
    with torch.no_grad():
        logits, _, _ = model(torch.from_numpy(X))
    keep = torch.from_numpy(Y) >= 0
    want = torch.nn.functional.cross_entropy(logits[keep], torch.from_numpy(Y)[keep])
    assert ev["val_ce"] == pytest.approx(float(want), rel=1e-5)


def test_cli_train_passes_seed_to_gpu_train(addition_folder, tmp_path, monkeypatch):
    """`gpu.tasks train ... --seed=1` is the training seed (it once went to the data generator and was lost)."""
    import gpu.train
    seen = []
    monkeypatch.setattr(gpu.train, "main", lambda argv: seen.append(argv) or 0)
    assert tasks.main(["train", "addition", "--data", addition_folder, "--out", str(tmp_path / "r"), "--seed=1",
                       "--halt-bias-init=-3"]) == 0
    from gpu.config import parse_args
    tc, mc, _ = parse_args(seen[0])
    assert tc.seed == 1 and mc.halt_bias_init == -3
    monkeypatch.setattr(gpu.train, "main", lambda argv: 1)  # a diverged run: its exit status passes through
    assert tasks.main(["train", "addition", "--data", addition_folder, "--out", str(tmp_path / "r")]) == 1
