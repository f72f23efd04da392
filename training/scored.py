"""One video sampled, decoded whole and scored with a reward mix: how preference pairs are made and how a DPO run's
held-out prompts are judged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..reward.composite import CompositeReward
from .families.base import VideoFamily
from .sampler import sample_as


@dataclass
class ScoredSample:
    """A sampled video: its latents `[...]` (one video), frames `[F,3,H,W]` in 0..1, each reward's per-frame scores and
    the mix's score (the mean over the frames)."""

    latents: torch.Tensor
    frames: torch.Tensor
    raw: list[torch.Tensor]
    score: float


@torch.no_grad()
def scored_sample(family: VideoFamily, reward: CompositeReward, prompt: str, settings: Any, generator: torch.Generator,
                  callback: Callable[[int, int], None] | None = None) -> ScoredSample:
    """Sample `prompt` with the sampling settings of `settings` (negative_prompt, frames, height, width, steps,
    guidance) from `generator`'s noise, decode every frame and score them."""
    latents = sample_as(family, [prompt], settings, generator, callback=callback)
    frames = family.decode(latents)[0].float()
    raw = reward.per_model(frames, prompt)
    return ScoredSample(latents[0], frames, raw, float(reward.combine(raw).mean()))
