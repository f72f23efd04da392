"""Temporal quality of a clip: clip rewards (one score per clip, differentiable w.r.t. the frames), higher is better.

With the clip's frames f[0..T-1] in 0..1 and `mean` over every channel and pixel:

- flicker = 1 - mean over t = 0..T-3 of mean |f[t+1] - (f[t] + f[t+2]) / 2|, in 0..1 (1: no flicker; needs 3 frames).
  The second difference in time: how far each frame leaves the midpoint of its neighbours, i.e. change that reverses
  from one frame to the next (a black/white alternation scores 0).
- dynamism = mean over t = 0..T-2 of mean (f[t+1] - f[t])^2, in 0..1 (0: a static clip; needs 2 frames). The energy
  of the first difference: how much the picture changes per frame, whatever its direction.
- subject_consistency = mean over t of cos(e[t], e[t+1]), in -1..1 (1: every frame embeds alike; needs 2 frames),
  where e[t] is the SigLIP image embedding (pooler output of siglip-so400m-patch14-384, preprocessed as Aesthetic v2.5
  does: squashed to 384x384, mean and std 0.5) of `clip_frames` (16 by default) evenly spaced frames, consecutive in
  that sampling: VBench's subject-consistency idea on the pack's own encoder.

Flicker and dynamism are not each other's mirror: a steady change (a fade, or smooth content moving by under a pixel
per frame, where each frame is the midpoint of its neighbours) has dynamism but no flicker; a change that goes back
and forth has both. A hard edge moving by whole pixels is not steady in pixel space (a pixel it crosses jumps once),
so such motion lowers flicker as well.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClipReward, ImageTower
from .aesthetic import load_siglip_tower
from .preprocess import Preprocess

SUBJECT_CONSISTENCY_FRAMES = 16


class PixelMeasure(ClipReward):
    """A temporal measure computed on the pixels themselves: no weights, no prompt."""

    uses_prompt = False

    def __init__(self, label: str, clip_frames: int | None = None) -> None:
        super().__init__(None, clip_frames)
        self.label = label

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Nothing to recompute: the measure has no activations worth dropping."""


class Flicker(PixelMeasure):
    """1 - the mean absolute second difference of the frames in time (see the module docstring)."""

    label = "Flicker"
    min_frames = 3

    def score_clip(self, frames: torch.Tensor, text: None) -> torch.Tensor:
        frames = frames.float()
        return 1.0 - (frames[1:-1] - (frames[:-2] + frames[2:]) / 2).abs().mean()


class Dynamism(PixelMeasure):
    """The mean squared difference of consecutive frames (see the module docstring)."""

    label = "Dynamism"
    min_frames = 2

    def score_clip(self, frames: torch.Tensor, text: None) -> torch.Tensor:
        frames = frames.float()
        return (frames[1:] - frames[:-1]).square().mean()


class SubjectConsistency(ImageTower, ClipReward):
    """The mean cosine between consecutive frames' image embeddings (see the module docstring)."""

    label = "Subject consistency"
    output_field = "pooler_output"
    uses_prompt = False
    min_frames = 2

    def __init__(
        self, backbone: nn.Module, preprocess: Preprocess, label: str, clip_frames: int | None = SUBJECT_CONSISTENCY_FRAMES
    ) -> None:
        super().__init__(preprocess, clip_frames)
        self.backbone = backbone
        self.label = label
        self.freeze()

    def score_clip(self, frames: torch.Tensor, text: None) -> torch.Tensor:
        embeddings = F.normalize(self.per_chunk(frames, self.embed_pixels), dim=-1)
        return (embeddings[1:] * embeddings[:-1]).sum(-1).mean()


def load_subject_consistency(checkpoint: None, siglip_folder: Path, dtype: torch.dtype, label: str) -> SubjectConsistency:
    return SubjectConsistency(*load_siglip_tower(siglip_folder, dtype, label), label)


def load_flicker(checkpoint: None, encoder: None, dtype: torch.dtype, label: str) -> Flicker:
    return Flicker(label)


def load_dynamism(checkpoint: None, encoder: None, dtype: torch.dtype, label: str) -> Dynamism:
    return Dynamism(label)
