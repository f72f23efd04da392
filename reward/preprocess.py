"""The official reward-model image pipelines as differentiable tensor operations.

Frames are `[N,3,H,W]` floats in 0..1. Resizing uses antialiased bicubic interpolation, which follows PIL's
bicubic filter and torchvision>=0.17's tensor resize. Pipelines that resize uint8 images (PIL, CLIPImageProcessor)
clip the result to 0..1; HPS resizes a float tensor and does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

Mode = Literal["letterbox", "resize_crop", "squash"]


def resize(frames: torch.Tensor, height: int, width: int, clamp: bool = True) -> torch.Tensor:
    if frames.shape[-2:] == (height, width):
        return frames
    out = F.interpolate(frames, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0) if clamp else out


def letterbox(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Longest side to `size` (rounded), then zero-pad to a centred square (HPS's open_clip `ResizeMaxSize`).

    Unlike the original, a frame whose longest side is already `size` is padded too, so every output is square."""
    height, width = frames.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    frames = resize(frames, new_h, new_w, clamp=False)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(frames, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def resize_crop(frames: torch.Tensor, size: int, offset: Literal["floor", "round"] = "floor") -> torch.Tensor:
    """Shortest side to `size` (long side truncated), then a centred `size` crop.

    `offset="floor"` places the crop as transformers' CLIPImageProcessor does, `"round"` as torchvision's CenterCrop."""
    height, width = frames.shape[-2:]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    frames = resize(frames, new_h, new_w)

    def start(extra: int) -> int:
        return extra // 2 if offset == "floor" else int(round(extra / 2.0))

    top, left = start(new_h - size), start(new_w - size)
    return frames[..., top : top + size, left : left + size]


def squash(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to `size`x`size` ignoring the aspect ratio."""
    return resize(frames, size, size)


def normalize(frames: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return (frames - m) / s


@dataclass(frozen=True)
class Preprocess:
    """One reward model's image pipeline: geometry, input size and normalisation."""

    mode: Mode
    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    crop_offset: Literal["floor", "round"] = "floor"

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [N,3,H,W], got {tuple(frames.shape)}")
        frames = frames.float()
        if self.mode == "letterbox":
            frames = letterbox(frames, self.size)
        elif self.mode == "resize_crop":
            frames = resize_crop(frames, self.size, self.crop_offset)
        else:
            frames = squash(frames, self.size)
        return normalize(frames, self.mean, self.std)
