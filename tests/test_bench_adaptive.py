"""python -m gpu.bench adaptive: runs at a tiny size and prints every row of docs/benchmarks.md; bad flags are named."""
import pytest

from gpu.bench import main


def test_bench_adaptive_prints_every_row(capsys):
    argv = ["adaptive", "--d-model", "32", "--seq-len", "16", "--new-tokens", "4", "--gen-batch", "2", "--repeats",
            "1", "--gen-repeats", "1", "--max-loops", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for row in ("realized mean depth", "masked / compact", "share of the step's FLOPs", "nothing halts",
                "cached / recomputing", "fixed / adaptive depth", "loop FLOPs", "whole-model FLOPs",
                "deepest row"):
        assert row in out
    assert out.count(": met |") + out.count(": **not met** |") == 4, "each issue target is stated as met or not"


@pytest.mark.parametrize("flag, value", [("--gen-batch", "0"), ("--max-loops", "1"), ("--new-tokens", "-2")])
def test_bench_adaptive_names_a_bad_flag(flag, value, capsys):
    assert main(["adaptive", flag, value]) == 2
    assert f"{flag}={value}: expected an int >=" in capsys.readouterr().err
