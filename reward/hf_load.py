"""Strict loading of transformers models: missing weights are an error, never silently random."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from .files import ModelFileError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def folder_config(folder: Path, what: str) -> dict[str, Any]:
    """The config.json of a model folder, checked to exist, with an error that says what the folder should hold."""
    if not folder.is_dir():
        raise ModelFileError(f"{what}: {folder} is not a folder (expected a Hugging Face model folder)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFileError(f"{what}: {folder.name} has no config.json (expected a Hugging Face model folder)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelFileError(f"{what}: {folder.name} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{what}: {config_file} is not valid JSON: {err}") from err


def load_strict(
    cls: Any,
    source: Path | None,
    dtype: torch.dtype,
    what: str,
    config: Any = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    ignore_unexpected: Iterable[str] = (),
) -> Any:
    """`cls.from_pretrained` that fails on any missing, mismatched or unexpected key.

    Unexpected keys starting with one of `ignore_unexpected` (weights of a tower we do not use) are allowed."""
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(
            str(source) if source is not None else None,
            config=config,
            state_dict=state_dict,
            dtype=dtype,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below with the keys, not raised without them
        )
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise ModelFileError(f"{what}: the weights could not be loaded: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    prefixes = tuple(ignore_unexpected)
    unexpected = sorted(
        key for key in info["unexpected_keys"] if not key.startswith(prefixes) and not key.endswith("position_ids")
    )
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing {_few(info['missing_keys'])}")
    if info["mismatched_keys"]:
        shapes = [f"{key} (file {list(ckpt)}, model {list(model)})" for key, ckpt, model in info["mismatched_keys"]]
        problems.append(f"wrong shapes {_few(shapes)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if problems:
        raise ModelFileError(f"{what}: the weights do not fit the model: {'; '.join(problems)}")
    return model.eval()


def _few(keys: Iterable[Any], limit: int = 5) -> str:
    keys = sorted(str(k) for k in keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} keys ({', '.join(keys[:limit])}{more})"
