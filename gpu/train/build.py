"""The model and optimizer a run trains: built from the reference's weights, wrapped for data parallelism,
compiled on request."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reference.exit_stage2 import decision_steps, gate_param_names

from ..config import TrainConfig
from ..model import from_reference
from .device import Dist
from .distributed import load_optimizer_state, wrap_distributed


@dataclass
class Trainee:
    """What the step loop updates: `model` runs the steps (wrapped and/or compiled), `raw_model` is the plain
    LoopedTransformer under it (the one to save), `optimizer` updates its parameters."""

    raw_model: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def make_optimizer(module, tc: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (as reference.optim.AdamW): the vectors (norm weights, step scales,
    the halting unit) are not decayed. Fused kernels on CUDA."""
    trained = [p for p in module.parameters() if p.requires_grad]  # (--exit-stage2 freezes all but the gate)
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    groups = [dict(params=decay, weight_decay=tc.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    extra = dict(fused=True) if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8, **extra)


def check_exit_stage2(tc: TrainConfig, mc) -> None:
    """--exit-stage2 (reference/exit_stage2.py): ValueError naming the flag for a model without an exit gate, one whose
    gate takes no decision (max_loops <= min_loops), or a setting that varies the depth it learns from."""
    if not tc.exit_stage2:
        return
    try:
        gate_param_names(mc)
        decision_steps(mc.max_loops, mc.min_loops)
    except ValueError as err:
        raise ValueError(f"--exit-stage2: {err}") from None
    for name, on in (("random_loops", tc.random_loops), ("min_loops_start", tc.min_loops_start)):
        if on:
            raise ValueError(f"--{name.replace('_', '-')} with --exit-stage2: Stage II learns the gate from the "
                             f"losses of all max_loops steps; drop --{name.replace('_', '-')}")


def freeze_all_but_gate(module, mc) -> None:
    """--exit-stage2: only the exit gate's parameters keep requires_grad (and so reach the optimizer)."""
    gate = set(gate_param_names(mc))
    for name, p in module.named_parameters():
        p.requires_grad_(name in gate)


def build(params: dict, opt_state: dict | None, mc, tc: TrainConfig, device, dist: Dist) -> Trainee:
    """Model from numpy `params` in the run's dtype on `device`, DDP/FSDP-wrapped with torchrun, its optimizer
    (loaded from `opt_state` when resuming), then torch.compile with --compile. --exit-stage2: all but the exit gate
    frozen."""
    param_dtype = torch.float64 if tc.dtype == "float64" else torch.float32
    raw_model = from_reference(params, mc, executor=tc.executor).to(device=device, dtype=param_dtype)
    if tc.exit_stage2:
        freeze_all_but_gate(raw_model, mc)  # before DDP, which syncs the parameters that require grad
    model = wrap_distributed(raw_model, tc, device) if dist.enabled else raw_model
    optimizer = make_optimizer(model, tc, device)  # after FSDP has replaced the parameters by shards
    if opt_state is not None:
        load_optimizer_state(model, optimizer, opt_state, tc, dist)
    if tc.compile:
        model = torch.compile(model)
    return Trainee(raw_model, model, optimizer)
