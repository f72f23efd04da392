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


def _per_model(reward: nn.Module, frames: torch.Tensor, prompt: str, indices: list[int]) -> list[torch.Tensor]:
    """Each reward's raw scores, in the order of a mix's terms (one reward: itself alone): a frame reward scores the
    frames at `indices`, a clip reward the whole clip."""
    if isinstance(reward, CompositeReward):
        return reward.per_model(frames, prompt, indices)
    return [reward(frames if is_clip_reward(reward) else frames[indices], prompt)]


def _score_terms(
    reward: nn.Module,
    frames: torch.Tensor,
    prompt: str,
    mode: FrameMode,
    count: int,
    seed: int,
    micro_batch: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[int], list[torch.Tensor]]:
    """The chosen frames of one video `[F,3,H,W]` in 0..1 and each reward's raw scores of them (`_per_model`),
    without gradients. A clip reward (or a mix with one) gets the whole clip in one call; frame rewards alone are
    scored `micro_batch` frames at a time. `progress` is told how many frames are done."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"a video must be [F,3,H,W] frames, got shape {tuple(frames.shape)}")
    indices = select_frames(frames.shape[0], mode, count, seed)
    step = len(indices) if takes_clip(reward) else max(1, micro_batch)
    chunks: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            chunks.append(_per_model(reward, frames, prompt, chunk))
            if progress is not None:
                progress(len(chunk))
    return indices, [torch.cat(parts) for parts in zip(*chunks)]


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
    indices, raw = _score_terms(reward, frames, prompt, mode, count, seed, micro_batch, progress)
    if is_clip_reward(reward):
        return VideoScore(indices, raw[0].tolist(), True, dict(reward.last_sub_scores))
    scores = reward.combine(raw) if isinstance(reward, CompositeReward) else raw[0]
    return VideoScore(indices, scores.expand(len(indices)).tolist())


@dataclass(frozen=True)
class ScoreRow:
    """One reward's scores of two videos, A and B."""

    label: str
    a: float
    b: float

    @property
    def difference(self) -> float:
        return self.b - self.a


@dataclass
class Comparison:
    """Two videos scored by one reward or a mix: each reward's raw score of A and of B (a frame reward's mean over
    the chosen frames, a clip reward's clip score) and, for a mix, the mix's score (`mix`)."""

    rewards: list[ScoreRow]
    mix: ScoreRow | None = None

    @property
    def total(self) -> ScoreRow:
        """The videos' scores: the mix's, or the one reward's."""
        return self.mix if self.mix is not None else self.rewards[0]

    def describe(self, label_a: str = "A", label_b: str = "B") -> str:
        """A table: reward, A, B, B−A, one row per reward and one for the mix."""
        rows = [*self.rewards, *([self.mix] if self.mix is not None else [])]
        table = [["reward", label_a, label_b, f"{label_b} − {label_a}"]]
        table += [[r.label, f"{r.a:.6g}", f"{r.b:.6g}", f"{r.difference:+.6g}"] for r in rows]
        widths = [max(len(line[column]) for line in table) for column in range(4)]
        return "\n".join(
            " | ".join(cell.ljust(w) if column == 0 else cell.rjust(w) for column, (cell, w) in enumerate(zip(line, widths)))
            for line in table
        )


def compare_videos(
    reward: nn.Module,
    video_a: torch.Tensor,
    video_b: torch.Tensor,
    prompt: str,
    mode: FrameMode = "all",
    count: int = 1,
    seed: int = 0,
    micro_batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Score two videos `[F,3,H,W]` in 0..1 with the same reward or mix and frame selection, without gradients."""
    raw = [_score_terms(reward, video, prompt, mode, count, seed, micro_batch, progress)[1] for video in (video_a, video_b)]
    mix = isinstance(reward, CompositeReward)
    labels = [term.model.label for term in reward.terms] if mix else [reward.label]
    rows = [ScoreRow(label, a.float().mean().item(), b.float().mean().item()) for label, a, b in zip(labels, *raw)]
    if not mix:
        return Comparison(rows)
    a, b = (reward.combine(scores).float().mean().item() for scores in raw)
    return Comparison(rows, ScoreRow(f"mix ({reward.label})", a, b))


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
