"""What gpu.train varies per step (gpu/train/schedule.py): the depth warm-up, the halt-penalty warm-up and random
depth (uniform or Huginn's Poisson-lognormal draw) for every halting rule; each resumes bit for bit. The model side
(per-call overrides equal to the reference with cfg.replace) is test_equivalence_per_call_overrides."""
import math

import numpy as np
import pytest

from gpu.config import TrainConfig, parse_args
from gpu.train import run
from gpu.train.schedule import SIGMA, Schedule, check_schedules
from reference import get_preset
from test_train import SMALL_MODEL, read_metrics, small_run


def train_and_resume(tmp_path, mc, **train):
    """An 8-step run, and the same run stopped after 4 steps and resumed to 8: (train records of both)."""
    full, _ = small_run(tmp_path / "full", max_steps=8, ckpt_every=4, eval_every=4, **train)
    run(full, mc)
    half, _ = small_run(tmp_path / "half", max_steps=4, ckpt_every=4, eval_every=4, **train)
    run(half, mc)
    run(TrainConfig(**{**half.to_dict(), "max_steps": 8, "resume": True}), mc)
    return read_metrics(full.out), read_metrics(half.out)


def test_random_loops_with_fixed_halting_varies_depth_per_step_and_resumes_exactly(tmp_path):
    mc = get_preset("tiny", **SMALL_MODEL, halt="fixed", max_loops=4)
    full, resumed = train_and_resume(tmp_path, mc, random_loops=True)
    depths = [r["mean_depth"] for r in full]
    assert set(depths) <= {1.0, 2.0, 3.0, 4.0} and len(set(depths)) >= 2, depths
    assert [r["loops"] for r in full] == depths  # fixed halting: every token runs the drawn count
    assert [r["mean_depth"] for r in read_metrics(tmp_path / "full", "eval")] == [4.0, 4.0]  # eval at max_loops
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bit-identical, draws replayed


@pytest.mark.parametrize("halt,dist", [("act", "poisson"), ("exit_gate", "uniform"), ("pondernet", "poisson")])
def test_random_depth_for_adaptive_rules_bounds_each_step_and_resumes_exactly(tmp_path, halt, dist):
    """An adaptive rule trains at the drawn loop count: no token of a step runs more steps than drawn."""
    mc = get_preset("tiny", **SMALL_MODEL, halt=halt, max_loops=4, min_loops=2)
    full, resumed = train_and_resume(tmp_path, mc, random_loops=True, random_loops_dist=dist, random_loops_max=6)
    assert all(2 <= r["loops"] <= 6 and r["mean_depth"] <= r["loops"] for r in full), full
    assert len({r["loops"] for r in full}) >= 2
    assert [(r["loss"], r["loops"]) for r in resumed] == [(r["loss"], r["loops"]) for r in full]


def test_depth_and_halt_penalty_warmups_follow_their_schedules_and_resume_exactly(tmp_path):
    mc = get_preset("tiny", **SMALL_MODEL, halt="act", max_loops=4, halt_penalty=0.01)
    warm = dict(min_loops_start=4, min_loops_warmup=6, halt_penalty_start=0.0, halt_penalty_warmup=4)
    full, resumed = train_and_resume(tmp_path, mc, **warm)
    assert [r["min_loops"] for r in full] == [4, 4, 3, 3, 2, 2, 1, 1]  # S - floor((S - m) t / W), t = step - 1
    assert [r["halt_penalty"] for r in full] == pytest.approx([0, 0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01])
    assert all(r["mean_depth"] >= r["min_loops"] for r in full)
    assert full[0]["mean_depth"] == 4.0  # min_loops = K: every token runs every step
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert "min_loops" not in read_metrics(tmp_path / "full", "eval")[0]  # eval: the model's own config


def test_the_schedule_calls_the_model_with_overrides_only_while_they_differ():
    mc = get_preset("tiny", halt="act", max_loops=4, min_loops=2, halt_penalty=0.01)
    s = Schedule(TrainConfig(min_loops_start=4, min_loops_warmup=4, halt_penalty_warmup=2), mc)
    assert [s.overrides(t) for t in range(5)] == [dict(min_loops=4, halt_penalty=0.0), dict(min_loops=4,
                                                  halt_penalty=0.005), dict(min_loops=3), dict(min_loops=3), None]
    assert s.draw_loops(np.random.default_rng(0), 0) is None  # no --random-loops: the model's own depth


def test_the_poisson_draw_is_hugins_lognormal_mixture_clipped_to_its_bounds():
    """r = 1 + Poisson(e^tau), tau ~ N(log rbar - sigma^2 / 2, sigma): E[r] = rbar + 1 unclipped; clipping bounds it."""
    mc = get_preset("tiny", halt="act", max_loops=4)
    wide = Schedule(TrainConfig(random_loops=True, random_loops_dist="poisson", random_loops_mean=4.0,
                                random_loops_max=200), mc)
    rng = np.random.default_rng(0)
    draws = np.array([wide.draw_loops(rng, 1000) for _ in range(20000)])
    assert SIGMA == 0.5 and abs(draws.mean() - 5.0) < 0.1 and draws.min() >= 1
    # the mixture is over-dispersed against a plain Poisson of the same mean: Var = rbar + rbar^2 (e^(sigma^2) - 1)
    assert abs(draws.var() - (4 + 16 * (math.exp(0.25) - 1))) < 0.5
    narrow = Schedule(TrainConfig(random_loops=True, random_loops_dist="poisson", min_loops_start=3,
                                  min_loops_warmup=10), mc)
    early = [narrow.draw_loops(rng, 0) for _ in range(500)]
    assert min(early) == 3 and max(early) == 4  # [min_loops(t), R = max_loops]
    uniform = Schedule(TrainConfig(random_loops=True), mc)
    assert sorted({uniform.draw_loops(rng, 0) for _ in range(200)}) == [1, 2, 3, 4]


@pytest.mark.parametrize("train,model,fragment", [
    (dict(min_loops_start=2, min_loops_warmup=5), dict(halt="fixed"), "min_loops changes nothing"),
    (dict(min_loops_start=5, min_loops_warmup=5), dict(halt="act"), "--min-loops-start=5: expected an int in [min"),
    (dict(halt_penalty_warmup=5), dict(halt="exit_gate"), "charges no halt penalty"),
    (dict(halt_penalty_warmup=5), dict(halt="fixed"), "charges no halt penalty"),
    (dict(random_loops=True, random_loops_max=1), dict(halt="act", min_loops=2), "below min_loops=2"),
])
def test_settings_the_model_cannot_use_are_refused(train, model, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        check_schedules(TrainConfig(**train), get_preset("tiny", **model))
    check_schedules(TrainConfig(), get_preset("tiny", **model))  # the defaults always pass


@pytest.mark.parametrize("args,fragment", [
    (["--min-loops-start=3"], "--min-loops-warmup=0 is invalid: expected an int >= 1 with --min-loops-start"),
    (["--halt-penalty-start=0.1"], "--halt-penalty-start=0.1 is invalid: expected 0 without --halt-penalty-warmup"),
    (["--random-loops-dist=poisson"], "no effect without --random-loops"),
    (["--random-loops", "--random-loops-dist=gamma"], "expected one of ('uniform', 'poisson')"),
    (["--random-loops", "--random-loops-mean=3"], "0 with --random-loops-dist=uniform"),
    (["--min-loops-warmup=-1"], "--min-loops-warmup=-1 is invalid: expected an int >= 0"),
    (["--executor=fast"], "--executor='fast' is invalid: expected one of ('auto', 'masked', 'compact')"),
])
def test_bad_schedule_flags_get_one_line_errors(args, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and fragment in err and err.count("\n") == 1, err
