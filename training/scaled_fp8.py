"""ComfyUI's "scaled fp8" checkpoints: float8 weights, each with a per-tensor float32 `<layer>.scale_weight`
(weight ≈ fp8 · scale), and a `scaled_fp8` marker tensor. Shared by baking (lora.merge) and model loading."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..reward.files import ModelFileError

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
MARKER = "scaled_fp8"
SCALES = (".scale_weight", ".scale_input")


def scale_key(weight_key: str) -> str:
    """The key of the per-tensor scale of the weight `weight_key` (`x.weight` -> `x.scale_weight`)."""
    return weight_key[: -len(".weight")] + ".scale_weight"


def dequantise(weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """`weight` in float32, times its per-tensor `scale` where it has one."""
    return weight.float() * scale.float() if scale is not None else weight.float()


def quantise_fp8(value: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, float32 scale) with `fp8 * scale ≈ value`, the scale mapping the largest |value| to fp8's max."""
    scale = (value.abs().max() / torch.finfo(dtype).max).clamp(min=1e-12)
    return (value / scale).to(dtype), scale.reshape(())


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Any]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelFileError(f"{what}: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{what}: {path.name} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def read_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a safetensors file, from its header (nothing else is read)."""
    with _opened(path, what) as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def read_dequantised(path: Path, dtype: torch.dtype, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, read one at a time: fp8 weights dequantised (with their scales) to
    `dtype`, the others as stored; the scales and the marker are consumed."""
    with _opened(path, what) as handle:
        keys = set(handle.keys())
        if any(key.endswith(".comfy_quant") for key in keys):
            raise ModelFileError(
                f"{what}: {path.name} uses ComfyUI's newer mixed quantisation format (comfy_quant), which the pack "
                "does not read; use the fp16/bf16 or the fp8_scaled file"
            )
        tensors = {}
        for key in handle.keys():
            if key == MARKER or key.endswith("." + MARKER) or key.endswith(SCALES):
                continue
            tensor = handle.get_tensor(key)
            if tensor.dtype in FP8:
                tensor = dequantise(tensor, handle.get_tensor(scale_key(key)) if scale_key(key) in keys else None).to(dtype)
            tensors[key] = tensor
    return tensors
