"""`make gpu-check` is written for a GPU this machine lacks; its parts run here tiny on the CPU, so that a lent
GPU slot is not spent on a typo."""
import json

from gpu.gpu_check import main


def test_gpu_check_without_cuda_says_so_and_exits_0(capsys):
    import torch
    if torch.cuda.is_available():
        return  # on a GPU machine the real check runs instead
    assert main(["--out", "unused"]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_check_parts_run_on_the_cpu(tmp_path):
    assert main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(result) >= {"bf16", "throughput", "compaction", "device"}
    assert len(result["throughput"]) == 3 and all(r["tokens_per_s"] > 0 for r in result["throughput"])
    assert 0 <= result["bf16"]["loss"] < 0.1, "bf16 autocast on the CPU should be close to float64"
