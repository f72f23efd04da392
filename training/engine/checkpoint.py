"""Trainer checkpoints: the float32 LoRA weights and the optimizer state in one safetensors file, so a resumed run
continues exactly where it stopped (the random draws of every step derive from the seed and the step number).

The file is the same whether the run was plain, FSDP-sharded or DeepSpeed-partitioned: whole tensors, the optimizer
state keyed by the parameter's position."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...reward.files import read_safetensors, write_safetensors_atomic
from ..distributed.sharding import full, like

STATE_FILE = "trainer.safetensors"

State = tuple[dict[str, torch.Tensor], dict[str, str]]


def pack_state(step: int, params: dict[str, torch.Tensor], optimizer_state: dict[int, dict[str, Any]],
               param_groups: list[dict[str, Any]]) -> State:
    """Whole LoRA weights and per-parameter optimizer state as safetensors tensors and metadata."""
    tensors = {f"param.{name}": value.detach().cpu().contiguous() for name, value in params.items()}
    scalars: dict[str, Any] = {}
    for index, values in optimizer_state.items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"step": str(step), "param_groups": json.dumps(param_groups), "scalars": json.dumps(scalars)}


def gather_state(step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> State:
    """The trainer state of a torch optimizer (gathered from every process when sharded)."""
    state = optimizer.state_dict()
    gathered = {index: {key: full(value) if isinstance(value, torch.Tensor) else value for key, value in values.items()}
                for index, values in state["state"].items()}
    return pack_state(step, {name: full(value) for name, value in params.items()}, gathered, state["param_groups"])


def save_state(folder: Path, state: State) -> None:
    tensors, metadata = state
    write_safetensors_atomic(tensors, folder / STATE_FILE, metadata)


def read_state(folder: Path, names: list[str]) -> tuple[int, list[torch.Tensor], dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """A checkpoint's step, LoRA weights in the order of `names`, optimizer state by position and parameter groups."""
    tensors, metadata = read_safetensors(folder / STATE_FILE)
    missing = [n for n in names if f"param.{n}" not in tensors]
    if missing:
        raise ValueError(f"{folder} does not fit this LoRA (missing {missing[:2]}); was the rank or target list changed?")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(metadata["scalars"]).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return int(metadata["step"]), [tensors[f"param.{n}"] for n in names], state, json.loads(metadata["param_groups"])


def load_state(folder: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Restore the LoRA weights (in place) and a torch optimizer; returns the step the checkpoint was taken at."""
    step, values, state, param_groups = read_state(folder, list(params))
    with torch.no_grad():
        for param, value in zip(params.values(), values):
            param.copy_(like(value, param))
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entries in state.items():
        param = ordered[index]
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                entries[key] = like(value, param)
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    return step
