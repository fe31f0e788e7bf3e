"""More than one process (torchrun): DDP or FSDP wrapping, gradient accumulation without a sync per micro-batch,
and the full model / optimizer state that checkpoints hold whichever wrapper trained it."""
from __future__ import annotations

import contextlib

import torch

from ..config import TrainConfig
from .device import Dist


def wrap_distributed(model, tc: TrainConfig, device):
    """The model wrapped for data-parallel training: FSDP (block by block, then the rest) with --fsdp, else DDP."""
    if tc.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in [*model.prelude, *model.core, *model.coda]:  # shard block by block, then the rest
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def accumulation_context(model, tc: TrainConfig, dist: Dist, micro: int):
    """DDP's no_sync() for every micro-batch but the last of an optimizer step: the gradients are all-reduced once.
    (FSDP and a single process need nothing.)"""
    if dist.enabled and not tc.fsdp and micro < tc.grad_accum - 1:
        return model.no_sync()
    return contextlib.nullcontext()


def full_state(raw_model, model, optimizer, tc: TrainConfig, dist: Dist) -> tuple[dict, dict]:
    """(numpy parameters by reference name, optimizer state dict) of the whole model. Under FSDP every rank must
    call it: the full state is gathered from the shards."""
    if tc.fsdp and dist.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
        params = {k: v.float().numpy() if v.dtype != torch.float64 else v.numpy() for k, v in model_sd.items()}
        return params, optim_sd
    return raw_model.to_reference(), optimizer.state_dict()


def load_optimizer_state(model, optimizer, opt_state: dict, tc: TrainConfig, dist: Dist) -> None:
    """Load a checkpoint's (full) optimizer state; under FSDP each rank keeps its shard of it."""
    if tc.fsdp and dist.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, opt_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(opt_state)
