"""Trainer checkpoints: the float32 LoRA weights and the optimizer state in one safetensors file, so a resumed run
continues exactly where it stopped (the random draws of every step derive from the seed and the step number)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..reward.files import read_safetensors, write_safetensors_atomic
from .sharding import full, like

STATE_FILE = "trainer.safetensors"


def gather_state(step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The whole trainer state as safetensors tensors and metadata (gathered from every process when sharded)."""
    tensors = {f"param.{name}": full(value.detach()).cpu().contiguous() for name, value in params.items()}
    scalars: dict[str, Any] = {}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = full(value.detach()).cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"step": str(step), "param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}


def save_state(folder: Path, state: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    tensors, metadata = state
    write_safetensors_atomic(tensors, folder / STATE_FILE, metadata)


def load_state(folder: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Restore the LoRA weights (in place) and the optimizer; returns the step the checkpoint was taken at."""
    tensors, metadata = read_safetensors(folder / STATE_FILE)
    missing = [n for n in params if f"param.{n}" not in tensors]
    if missing:
        raise ValueError(f"{folder} does not fit this LoRA (missing {missing[:2]}); was the rank or target list changed?")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(like(tensors[f"param.{name}"], param))
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            param = ordered[int(index)]
            state.setdefault(int(index), {})[name] = like(value, param) if value.shape == param.shape else value
    for key, value in json.loads(metadata["scalars"]).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return int(metadata["step"])
