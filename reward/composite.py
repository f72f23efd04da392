"""Mixing several rewards, choosing which frames are scored, and turning scores into a loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from .seeds import seeded_generator

FrameMode = Literal["all", "first", "evenly", "random"]
FRAME_MODES: tuple[str, ...] = ("all", "first", "evenly", "random")
LossForm = Literal["negative", "target"]
LOSS_FORMS: tuple[str, ...] = ("negative", "target")


def select_frames(num_frames: int, mode: FrameMode = "all", count: int = 1, seed: int = 0) -> list[int]:
    """Indices of the frames to score: all, the first, `count` evenly spaced (ends included), or `count` at random
    (drawn from `seed`, 0..2^64-1, through `seeds.seeded_generator`)."""
    if num_frames < 1:
        raise ValueError("there are no frames to select from")
    if mode == "all":
        return list(range(num_frames))
    if mode == "first":
        return [0]
    if count < 1:
        raise ValueError(f"frame count must be at least 1 for '{mode}' selection, got {count}")
    count = min(count, num_frames)
    if mode == "evenly":
        return torch.linspace(0, num_frames - 1, count).round().long().unique().tolist()
    if mode == "random":
        return sorted(torch.randperm(num_frames, generator=seeded_generator(seed))[:count].tolist())
    raise ValueError(f"unknown frame selection '{mode}'; choose one of {', '.join(FRAME_MODES)}")


def is_clip_reward(model: nn.Module) -> bool:
    """Whether `model` scores whole clips (one score `[1]`, frames of its own choice) rather than single frames."""
    return getattr(model, "per_clip", False) is True


def reward_loss(rewards: torch.Tensor, form: LossForm = "negative", target: float = 1.0, scale: float = 1.0) -> torch.Tensor:
    """Batch-mean loss from per-video rewards: `-r * scale`, or `|r - target| * scale`."""
    if form == "negative":
        return (-rewards * scale).mean()
    if form == "target":
        return ((rewards - target).abs() * scale).mean()
    raise ValueError(f"unknown loss form '{form}'; choose one of {', '.join(LOSS_FORMS)}")


@dataclass
class RewardTerm:
    """One reward in a mix: its score is normalised as `(score - mean) / std` and weighted."""

    model: nn.Module
    weight: float = 1.0
    mean: float = 0.0
    std: float = 1.0


class CompositeReward(nn.Module):
    """A weighted sum of normalised rewards, with the same call as a single reward: `(frames, prompt) -> [F]`.

    A clip reward's `[1]` broadcasts over the frame rewards' `[F]`, so the mean over frames of the mix is the weighted
    sum of each frame reward's normalised frame mean and each clip reward's normalised clip score (a mix of clip
    rewards only gives `[1]`)."""

    uses_prompt = True

    def __init__(self, terms: Sequence[RewardTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a composite reward needs at least one reward")
        for term in terms:
            if term.std <= 0:
                raise ValueError(f"normalisation std must be positive, got {term.std} for {term.model.label}")
        self.terms = list(terms)
        self.models = nn.ModuleList(term.model for term in terms)
        self.label = " + ".join(f"{t.weight:g}*{t.model.label}" for t in terms)

    def terms_per_clip(self) -> list[bool]:
        """Whether each term, in order, is a clip reward (it takes the whole clip; frame selection is not for it)."""
        return [is_clip_reward(term.model) for term in self.terms]

    def per_model(self, frames: torch.Tensor, prompt: str, frame_indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Each model's raw scores, in the order of the terms: a frame reward scores `frames[frame_indices]` (all
        frames when None), a clip reward the whole clip."""
        picked = frames if frame_indices is None else frames[list(frame_indices)]
        return [term.model(frames if clip else picked, prompt) for term, clip in zip(self.terms, self.terms_per_clip())]

    def combine(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(t.weight * (r - t.mean) / t.std for t, r in zip(self.terms, raw))

    def forward(self, frames: torch.Tensor, prompt: str = "", frame_indices: Sequence[int] | None = None) -> torch.Tensor:
        return self.combine(self.per_model(frames, prompt, frame_indices))

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for term in self.terms:
            term.model.set_gradient_checkpointing(enabled)

