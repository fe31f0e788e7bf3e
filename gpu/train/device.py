"""Where a run computes: the process group torchrun sets up, the device, CPU threads and autocast."""
from __future__ import annotations

import contextlib
import os

import torch


class Dist:
    """rank / world size from torchrun's environment; a single process otherwise."""

    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        # the tensors of the small collectives below live where the backend wants them (NCCL: on the GPU)
        self.comm_device = torch.device("cuda", self.local_rank) if device_kind == "cuda" else torch.device("cpu")
        if self.enabled:
            torch.distributed.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _reduce(self, value: float, op) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=op)
        return float(t.item())

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        if not self.enabled:
            return value
        return self._reduce(value, torch.distributed.ReduceOp.SUM) / self.world

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (all processes take the same decision)."""
        if not self.enabled:
            return bool(flag)
        return self._reduce(float(bool(flag)), torch.distributed.ReduceOp.MAX) > 0

    def from_main(self, value: int) -> int:
        """Rank 0's `value`, on every process."""
        if not self.enabled:
            return value
        return int(self._reduce(float(value) if self.main else -1e300, torch.distributed.ReduceOp.MAX))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self):
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def device_kind(name: str) -> str:
    """'cuda' or 'cpu': the kind of device --device=name resolves to (decides the process group's backend)."""
    return "cuda" if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()) else "cpu"


def cpu_threads(requested: int, world: int) -> int:
    """Intra-op threads per process on the CPU. Auto leaves one core free: when every core runs one of torch's
    threads and another process takes a core, each parallel op waits for the descheduled thread, and a step
    measured at 36 ms became 3.5 s on a 2-core machine (docs/benchmarks.md)."""
    if requested:
        return requested
    return max(1, ((os.cpu_count() or 1) - 1) // world)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device of --device=name (auto | cpu | cuda | cuda:N); plain `cuda` is this process's local GPU.
    ValueError naming the fix for an unknown name or a CUDA device torch cannot see."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device={name} but torch sees no CUDA device: use --device=cpu or install a CUDA "
                             f"build of torch (see README)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise ValueError(f"--device={name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def setup_device(name: str, threads: int, dist: Dist) -> torch.device:
    """Resolve the device and set torch up for it: intra-op threads on the CPU; TF32 matmuls on CUDA."""
    device = resolve_device(name, dist.local_rank)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(threads, dist.world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(dtype: str, device: torch.device):
    """bf16 autocast for --dtype=bfloat16, else nothing (the weights' own dtype)."""
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
