"""Fully sharded data parallel training (torch FSDP2): each process keeps a slice of every transformer's weights, of
the LoRA, of its gradients and of the optimizer state, and gathers one transformer block at a time to run it.

Turned on by `fsdp: true` in the training config, or by launching with an accelerate FSDP config. The sharded
parameters are DTensors; `full` and `like` convert between them and the whole tensors checkpoints hold.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def wants_fsdp(fsdp: bool, accelerator: Any) -> bool:
    """Whether to shard: asked for in the config, or the process was launched with an accelerate FSDP config."""
    if accelerator is None:
        return fsdp
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return False  # DeepSpeed partitions instead (distributed.zero), and refuses fsdp: true
    return fsdp or accelerator.distributed_type == DistributedType.FSDP


def shard(model: nn.Module, device: torch.device) -> None:
    """Shard `model` in place across all processes, one group per block (diffusers' `_no_split_modules`), moving the
    shards to `device`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not torch.distributed.is_initialized():
        raise RuntimeError("FSDP shards across processes: run the job under accelerate launch with 2 or more processes")
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer blocks to shard (_no_split_modules)")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def held_fraction(model: nn.Module) -> float:
    """The share of `model`'s weights this process holds: its FSDP slices, or its DeepSpeed stage-3 partitions."""
    params = list(model.parameters())
    local = sum(p.to_local().numel() if is_sharded(p) else p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                for p in params)
    return local / sum(getattr(p, "ds_numel", p.numel()) for p in params)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every process when `tensor` is sharded; a collective call then)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor) laid out as `param` is: this process's slice when `param` is sharded."""
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
