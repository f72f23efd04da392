"""ComfyUI's "scaled fp8" checkpoints: float8 weights, each with a float32 `<layer>.scale_weight` (weight ≈ fp8 · scale),
and a `scaled_fp8` marker tensor. Shared by baking (lora.merge) and model loading.

ComfyUI writes the scale as a 0-dim tensor (and `scale_input` likewise); files from other tools hold it as shape (1,),
or per output channel, one scale per row of the weight (shape (out, 1) or (out,)). All of these are read; a re-quantised
scale keeps the shape and granularity of the one it replaces."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..reward.files import ModelFileError, safetensors_header

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
MARKER = "scaled_fp8"
SCALES = (".scale_weight", ".scale_input")


def scale_key(weight_key: str) -> str:
    """The key of the per-tensor scale of the weight `weight_key` (`x.weight` -> `x.scale_weight`)."""
    return weight_key[: -len(".weight")] + ".scale_weight"


def broadcast_scale(scale: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], key: str = "") -> torch.Tensor:
    """`scale` shaped to multiply a weight of `weight_shape`: one value for the whole tensor (0-dim or any shape of
    one element) or one per output row (`weight_shape[0]` elements). Raises ValueError for any other size."""
    if scale.numel() == 1:
        return scale.reshape(())
    if len(weight_shape) and scale.numel() == weight_shape[0]:
        return scale.reshape(weight_shape[0], *[1] * (len(weight_shape) - 1))
    raise ValueError(
        f"{key or 'a scale'} has shape {list(scale.shape)}: a scale_weight holds one value or one per output row "
        f"({weight_shape[0] if len(weight_shape) else 1} for a weight of shape {list(weight_shape)})"
    )


def dequantise(weight: torch.Tensor, scale: torch.Tensor | None = None, key: str = "") -> torch.Tensor:
    """`weight` in float32, times its `scale` (per tensor or per output row) where it has one."""
    if scale is None:
        return weight.float()
    return weight.float() * broadcast_scale(scale, weight.shape, key).float()


def quantise_fp8(value: torch.Tensor, dtype: torch.dtype, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, float32 scale) with `fp8 * scale ≈ value`, each scale mapping the largest |value| it covers to
    fp8's max. The scale is 0-dim (ComfyUI's form), or of the shape and granularity of `like`, an existing scale."""
    per_row = like is not None and like.numel() > 1
    peak = value.abs().flatten(1).amax(1) if per_row else value.abs().max()
    scale = (peak.float() / torch.finfo(dtype).max).clamp(min=1e-12)
    quantised = (value / broadcast_scale(scale, value.shape)).to(dtype)
    return quantised, scale.reshape(like.shape if like is not None else ())


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Any]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelFileError(f"{what}: {path} does not exist")
    try:
        safetensors_header(path)
    except ModelFileError as err:
        raise ModelFileError(f"{what}: {err}") from err
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
                scale = handle.get_tensor(scale_key(key)) if scale_key(key) in keys else None
                try:
                    tensor = dequantise(tensor, scale, scale_key(key)).to(dtype)
                except ValueError as err:
                    raise ModelFileError(f"{what}: {path.name}: {err}") from err
            tensors[key] = tensor
    return tensors
