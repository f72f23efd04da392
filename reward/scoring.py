"""Scoring whole videos: pick frames, score them in micro-batches, rank candidates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .composite import CompositeReward, FrameMode, is_clip_reward, select_frames


@dataclass
class VideoScore:
    """Scores of the chosen frames of one video (`score` is their mean), or with `whole_clip` the one score of a clip
    reward (`frame_scores` holds it alone) and its named sub-scores."""

    frame_indices: list[int]
    frame_scores: list[float]
    whole_clip: bool = False
    sub_scores: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(self.frame_scores) / len(self.frame_scores)

    def describe(self) -> str:
        if self.whole_clip:
            rows = [f"{name}: {value:.6g}" for name, value in self.sub_scores.items()]
            return "\n".join([f"video score: {self.score:.6g} (the whole clip)", *rows])
        rows = [f"frame {i}: {s:.6g}" for i, s in zip(self.frame_indices, self.frame_scores)]
        return f"video score: {self.score:.6g} (mean of {len(rows)} frames)\n" + "\n".join(rows)


def takes_clip(reward: nn.Module) -> bool:
    """Whether `reward` (a reward or a mix) needs the whole clip in one call: it is, or mixes in, a clip reward."""
    return is_clip_reward(reward) or isinstance(reward, CompositeReward) and any(reward.terms_per_clip())


def score_video(
    reward: nn.Module,
    frames: torch.Tensor,
    prompt: str,
    mode: FrameMode = "all",
    count: int = 1,
    seed: int = 0,
    micro_batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> VideoScore:
    """Score one video `[F,3,H,W]` in 0..1 without gradients; `progress` is told how many frames are done. A clip
    reward (or a mix with one) gets the whole clip in one call."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"a video must be [F,3,H,W] frames, got shape {tuple(frames.shape)}")
    indices = select_frames(frames.shape[0], mode, count, seed)
    if takes_clip(reward):  # one call on the whole clip; the frame rewards of a mix score the chosen frames
        with torch.no_grad():
            scores = reward(frames, prompt, indices) if isinstance(reward, CompositeReward) else reward(frames, prompt)
        if progress is not None:
            progress(len(indices))
        if is_clip_reward(reward):
            return VideoScore(indices, scores.tolist(), True, dict(reward.last_sub_scores))
        return VideoScore(indices, scores.expand(len(indices)).tolist())
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(indices), max(1, micro_batch)):
            chunk = indices[start : start + micro_batch]
            scores += reward(frames[chunk], prompt).tolist()
            if progress is not None:
                progress(len(chunk))
    return VideoScore(indices, scores)


def split_videos(frames: torch.Tensor, frames_per_video: int) -> list[torch.Tensor]:
    """A batch of frames cut into consecutive videos of `frames_per_video` frames each."""
    if frames_per_video < 1:
        raise ValueError("frames per video must be at least 1")
    if frames.shape[0] % frames_per_video:
        raise ValueError(
            f"{frames.shape[0]} frames do not divide into videos of {frames_per_video} frames; "
            "set frames per video to the length of one candidate"
        )
    return list(frames.split(frames_per_video))


def rank_videos(reward: nn.Module, videos: Sequence[torch.Tensor], prompt: str, **score_args) -> list[tuple[int, VideoScore]]:
    """(index, score) of every candidate video, best first."""
    if not videos:
        raise ValueError("there are no videos to rank")
    scored = [(i, score_video(reward, video, prompt, **score_args)) for i, video in enumerate(videos)]
    return sorted(scored, key=lambda item: item[1].score, reverse=True)
