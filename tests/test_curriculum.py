"""--curriculum (gpu/train/curriculum.py): a task's difficulty levels enter the loss one by one, the training batches
score exactly the levels entered, evaluation scores all, a resumed run continues the same curriculum, and bad
settings get one clear error."""
import dataclasses

import numpy as np
import pytest
import torch

import gpu.train.loop as loop
from gpu import tasks
from gpu.config import TrainConfig, parse_args
from gpu.train import load_data, run
from gpu.train.curriculum import Curriculum
from reference import get_preset
from test_train import SMALL_MODEL, read_metrics, small_run


@pytest.fixture(scope="module")
def phop_folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tasks") / "phop")
    tasks.write_task("phop", out, n_train=200, n_val=40, seed=5, min_size=1, max_size=4)
    return out


def wide(tc: TrainConfig) -> TrainConfig:
    """small_run's settings with 32 sequences a batch: every level has answers in the batches of 2 steps."""
    return dataclasses.replace(tc, batch_size=32)


def test_levels_enter_at_equal_intervals_on_top_of_ignore_topics(phop_folder, tmp_path):
    data = load_data(TrainConfig(data=phop_folder, ignore_topics="prompt", out=str(tmp_path)))
    topics = data["topics"]
    c = Curriculum(TrainConfig(data=phop_folder, ignore_topics="prompt", curriculum="hop", curriculum_steps=6), data)
    assert [v for v, _ in c.levels] == [1, 2, 3, 4]  # hop0 is a label name but no train token has it
    assert [c.entry_step(i) for i in range(4)] == [0, 2, 4, 6]  # floor(i W / (n - 1))
    assert [c.level(t) for t in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]
    named = lambda ids: sorted(topics[i] for i in ids)  # noqa: E731
    assert named(c.ignore_ids(0)) == ["hop2", "hop3", "hop4", "prompt"]
    assert named(c.ignore_ids(5)) == ["hop4", "prompt"]
    assert named(c.ignore_ids(6)) == named(c.ignore_ids(10**6)) == ["prompt"]
    assert c.after_step(3, 0, 0) == {"curriculum_level": 2}  # no mastery: no accuracy, nothing changes
    off = Curriculum(TrainConfig(data=phop_folder), data)
    assert off.level(0) is None and off.after_step(0, 0, 0) == {} and off.ignore_ids(0) is data["ignore_ids"]


def test_training_scores_only_the_entered_levels_evaluates_all_and_resumes_exactly(phop_folder, tmp_path,
                                                                                   monkeypatch):
    scored = []  # per micro-batch: the topic names whose targets the loss scores
    sample = loop.sample_global_batch

    def recording(data, split, *args):
        x, y, t = sample(data, split, *args)
        scored.append({data["topics"][i] for i in np.unique(t[y >= 0])})
        return x, y, t

    monkeypatch.setattr(loop, "sample_global_batch", recording)
    mc = get_preset("tiny", **SMALL_MODEL, vocab_size=len(tasks.vocab()))
    common = dict(data=phop_folder, ignore_topics="prompt", curriculum="hop", curriculum_steps=6)
    full = wide(small_run(tmp_path / "full", max_steps=8, ckpt_every=4, eval_every=4, **common)[0])
    run(full, mc)
    records = read_metrics(full.out)
    assert [r["curriculum_level"] for r in records] == [1, 1, 2, 2, 3, 3, 4, 4]
    for r, names in zip(records, scored):
        allowed = {f"hop{v}" for v in range(1, r["curriculum_level"] + 1)} | {"end"}
        assert names <= allowed, (r["step"], names)
    assert set().union(*scored[:2]) == {"hop1", "end"} or set().union(*scored[:2]) == {"hop1"}  # not vacuous
    assert "hop4" in set().union(*scored[6:])  # the hardest level is scored once it entered
    assert "curriculum_level" not in read_metrics(full.out, "eval")[0]  # evaluation scores every level

    half = wide(small_run(tmp_path / "half", max_steps=4, ckpt_every=4, eval_every=4, **common)[0])
    run(half, mc)
    run(TrainConfig(**{**half.to_dict(), "max_steps": 8, "resume": True}), mc)
    resumed = read_metrics(half.out)
    assert [(r["loss"], r["curriculum_level"]) for r in resumed] == [(r["loss"], r["curriculum_level"])
                                                                      for r in records]


def test_a_curriculum_changes_the_loss_of_the_first_steps(phop_folder, tmp_path):
    """The same run without the curriculum (the same batches) has other losses from step 1 on: it is not a no-op."""
    mc = get_preset("tiny", **SMALL_MODEL, vocab_size=len(tasks.vocab()))
    base = dict(data=phop_folder, ignore_topics="prompt", max_steps=2, eval_every=2, ckpt_every=2)
    with_c, _ = small_run(tmp_path / "with", curriculum="hop", curriculum_steps=6, **base)
    without, _ = small_run(tmp_path / "without", **base)
    run(with_c, mc)
    run(without, mc)
    assert read_metrics(with_c.out)[0]["loss"] != read_metrics(without.out)[0]["loss"]


def test_a_prefix_the_folder_does_not_label_is_refused_before_the_run_folder(phop_folder, tmp_path):
    tc, mc = small_run(tmp_path / "r", data=phop_folder, curriculum="carry", curriculum_steps=4)
    with pytest.raises(ValueError, match=r"no topic of the train split is named carry<number>; this folder's "
                                         r"difficulty labels are \['hop'\]"):
        run(tc, mc.replace(vocab_size=len(tasks.vocab())))
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="has no topic labels"):
        Curriculum(TrainConfig(curriculum="hop", curriculum_steps=4),
                   dict(ignore_ids=np.array([], np.int64), topics=[], train_topics=None, meta={}))


@pytest.mark.parametrize("args,fragment", [
    (["--curriculum=hop"], "--curriculum-steps=0 is invalid: expected an int >= 1 with --curriculum"),
    (["--curriculum-steps=100"], "--curriculum-steps=100 is invalid: expected an int >= 1 with --curriculum"),
    (["--curriculum=hop", "--curriculum-steps=-1"], "--curriculum-steps=-1 is invalid: expected an int >= 0"),
    (["--curriculum-mastery=0.9"], "--curriculum-mastery=0.9 is invalid: expected a share in [0, 1] (0 = the"),
    (["--curriculum=hop", "--curriculum-steps=9", "--curriculum-mastery=2"], "expected a share in [0, 1]"),
])
def test_bad_curriculum_flags_get_one_line_errors(args, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and fragment in err and err.count("\n") == 1, err


def test_mastery_lets_the_next_level_enter_after_a_full_accurate_window(phop_folder, tmp_path, monkeypatch):
    import gpu.train.curriculum as cur
    monkeypatch.setattr(cur, "WINDOW", 3)
    data = load_data(TrainConfig(data=phop_folder, out=str(tmp_path)))
    c = Curriculum(TrainConfig(data=phop_folder, curriculum="hop", curriculum_steps=900, curriculum_mastery=0.5), data)
    assert [c.entry_step(i) for i in range(4)] == [0, 300, 600, 900]
    records = [c.after_step(t, right, 10) for t, right in enumerate([9, 1, 4, 6, 6, 6, 9])]
    # window (1, 4, 6): 11/30 < 0.5; (4, 6, 6): 16/30 >= 0.5 -> level 2 from step 5, the window restarts
    assert [r["curriculum_level"] for r in records] == [1, 1, 1, 1, 1, 2, 2]
    assert records[4]["curriculum_accuracy"] == pytest.approx(16 / 30) and len(c.window) == 2
    saved = c.state()
    again = Curriculum(TrainConfig(data=phop_folder, curriculum="hop", curriculum_steps=900, curriculum_mastery=0.5),
                       data)
    again.restore(saved)
    assert again.state() == saved and again.entered(7) == 2 and again.level(350) == 2  # the schedule is the latest
    assert again.level(300) == 2 and again.level(600) == 3
    logits = torch.zeros(1, 3, len(data["topics"]) + 50)
    logits[0, 0, 7] = logits[0, 1, 5] = logits[0, 2, 7] = 1.0
    hop1, hop3 = data["topics"].index("hop1"), data["topics"].index("hop3")
    x, y, topic = np.array([[0, 9, 9]]), np.array([[7, 7, 7]]), np.array([[hop1, hop1, hop3]])
    assert again.answers_right(logits, x, y, topic, step=7) == (1, 2)  # hop3 not yet scored: not counted
    assert again.answers_right(logits, x, y, topic, step=600) == (2, 3)
    assert again.answers_right(logits, np.array([[9, 0, 9]]), y, topic, step=600) == (1, 2)  # a cut-off answer


def test_a_mastery_curriculum_advances_in_training_and_resumes_exactly(phop_folder, tmp_path, monkeypatch):
    import gpu.train.curriculum as cur
    monkeypatch.setattr(cur, "WINDOW", 3)
    mc = get_preset("tiny", **SMALL_MODEL, vocab_size=len(tasks.vocab()), halt_bias_init=1.0)  # measured: advances
    common = dict(data=phop_folder, ignore_topics="prompt", curriculum="hop", curriculum_steps=10_000,
                  curriculum_mastery=0.2, ckpt_every=21, eval_every=15, lr=0.03, warmup=0,
                  min_lr_ratio=1.0)  # a constant lr: the half run trains exactly as the full one
    full = wide(small_run(tmp_path / "full", max_steps=30, **common)[0])
    run(full, mc)
    records = read_metrics(full.out)
    levels = [r["curriculum_level"] for r in records]
    assert levels == sorted(levels) and levels[20] > 1, levels  # the schedule alone: level 1 throughout
    for before, after in zip(records, records[1:]):
        if after["curriculum_level"] > before["curriculum_level"]:
            assert before["curriculum_accuracy"] >= 0.2
    half = wide(small_run(tmp_path / "half", max_steps=21, **common)[0])
    run(half, mc)
    run(TrainConfig(**{**half.to_dict(), "max_steps": 30, "resume": True}), mc)
    key = lambda r: (r["loss"], r["curriculum_level"], r.get("curriculum_accuracy"))  # noqa: E731
    assert [key(r) for r in read_metrics(half.out)] == [key(r) for r in records]


def test_whole_documents_scores_only_problems_that_start_inside_the_window(phop_folder, tmp_path):
    """--whole-documents: a target is scored once an end-of-text precedes it in the window, in training and eval."""
    from gpu.train.data import mask_cut_documents, sample_global_batch
    from gpu.train.device import Dist
    tc = TrainConfig(data=phop_folder, whole_documents=True, out=str(tmp_path))
    data = load_data(tc)
    assert data["cut_eot"] == 0 and load_data(TrainConfig(data=phop_folder, out=str(tmp_path)))["cut_eot"] is None
    x, y, _ = sample_global_batch(data, "train", 8, 32, np.random.default_rng(0), Dist("cpu"))
    for row_x, row_y in zip(x, y):
        first = int(np.argmax(row_x == 0)) if (row_x == 0).any() else len(row_x)
        assert (row_y[:first] == -1).all() and (row_y[first:] >= 0).all()
    assert mask_cut_documents(x, y, None) is y
    x1, y1 = np.array([[5, 0, 6, 7]]), np.array([[0, 6, 7, 8]])
    assert mask_cut_documents(x1, y1, 0).tolist() == [[-1, 6, 7, 8]]
