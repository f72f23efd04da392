"""Strict loading of model folders: every subfolder checked, every weight present, no silent random init."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...reward.files import ModelFileError

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                     "diffusion_pytorch_model.bin")


def subfolder(root: Path, name: str, holds: str, family: str) -> Path:
    """`root/name`, or an error that says which subfolder of a `family` model folder is missing and what it holds."""
    if not root.is_dir():
        raise ModelFileError(f"{root} is not a folder; {family} loads from the model's folder")
    path = root / name
    if not path.is_dir():
        raise ModelFileError(f"{root.name} has no '{name}' subfolder ({holds}); is it a complete {family} model folder?")
    return path


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFileError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path} is not valid JSON: {err}") from err


def load_diffusers(cls: Any, folder: Path, dtype: torch.dtype, what: str, **config_overrides: Any) -> Any:
    """`cls.from_pretrained(folder)` that fails on missing, unexpected or mismatched weights and on corrupt files."""
    from safetensors import SafetensorError

    if not any((folder / name).is_file() for name in DIFFUSERS_WEIGHTS):
        raise ModelFileError(f"{what}: {folder} has no weights ({DIFFUSERS_WEIGHTS[0]})")
    try:
        model, info = cls.from_pretrained(str(folder), torch_dtype=dtype, output_loading_info=True, **config_overrides)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise ModelFileError(f"{what}: {folder} could not be loaded (truncated or corrupt?): {err}") from err
    problems = [f"{kind.replace('_', ' ')}: {sorted(map(str, keys))[:4]}" for kind, keys in info.items()
                if kind in ("missing_keys", "unexpected_keys", "mismatched_keys") and keys]
    if problems:
        raise ModelFileError(f"{what}: the weights in {folder} do not fit the model ({'; '.join(problems)})")
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: Path, what: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{what}: the tokenizer in {folder} could not be loaded: {err}") from err


def scheduler_config(folder: Path, what: str) -> dict[str, Any]:
    """The scheduler_config.json of a model's scheduler subfolder."""
    from diffusers import DDIMScheduler

    try:
        return dict(DDIMScheduler.load_config(str(folder)))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{what}: {folder} has no readable scheduler_config.json: {err}") from err
