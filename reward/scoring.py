"""Scoring whole videos: pick frames, score them in micro-batches, rank candidates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .composite import FrameMode, select_frames


@dataclass
class VideoScore:
    """Scores of the chosen frames of one video; `score` is their mean."""

    frame_indices: list[int]
    frame_scores: list[float]

    @property
    def score(self) -> float:
        return sum(self.frame_scores) / len(self.frame_scores)

    def describe(self) -> str:
        rows = [f"frame {i}: {s:.6g}" for i, s in zip(self.frame_indices, self.frame_scores)]
        return f"video score: {self.score:.6g} (mean of {len(rows)} frames)\n" + "\n".join(rows)


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
    """Score one video `[F,3,H,W]` in 0..1 without gradients; `progress` is told how many frames are done."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"a video must be [F,3,H,W] frames, got shape {tuple(frames.shape)}")
    indices = select_frames(frames.shape[0], mode, count, seed)
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
