"""The one interface every reward model has: frames in 0..1 plus a prompt in, differentiable scores out (one per
frame, or one per clip for a clip reward)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from .composite import select_frames
from .preprocess import Preprocess

TEXT_CACHE_SIZE = 256
DEFAULT_MICRO_BATCH = 8


def model_output(output: Any, field: str) -> torch.Tensor:
    """A tensor from a transformers output, which is a bare tensor in transformers 4.x feature getters."""
    return output if isinstance(output, torch.Tensor) else getattr(output, field)


def set_hf_checkpointing(model: nn.Module, tower: nn.Module, enabled: bool) -> None:
    """Toggle transformers' activation checkpointing on `model`, and train mode on the `tower` that gets gradients.

    Checkpointing only acts in train mode; the CLIP and SigLIP towers have no dropout, so train mode is safe."""
    if enabled:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    tower.train(enabled)


def check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [F,3,H,W] in 0..1, got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to score")


class RewardModel(nn.Module):
    """A frozen preference model. `forward(frames [F,3,H,W] in 0..1, prompt)` gives scores `[F]` (float32).

    Gradients flow to the frames; the model's own weights stay frozen. Frames are scored in micro-batches of
    `micro_batch` (set by `registry.load_reward`, from the loader node's setting): the one place that decides how
    many frames go through one forward. Text features are computed once per prompt without gradients and cached.

    A clip reward (`per_clip = True`, a `ClipReward`) scores the clip as a whole instead: `forward(frames, prompt)`
    takes all the clip's frames and gives one score `[1]`, which broadcasts against frame rewards' `[F]` in a
    `CompositeReward`. It picks its own frames (`clip_frames` evenly spaced ones, None: all), so callers pass it the
    whole clip and skip their frame selection for it (`composite.is_clip_reward`). Named sub-scores of the clip it
    scored last, if it has any, are in its `last_sub_scores` (name -> float, set by every forward, empty when none).
    """

    label = "reward"
    uses_prompt = True
    per_clip = False
    embeds = False  # whether `embed_pixels` gives image embeddings (rewards built on an image encoder)

    def __init__(self, preprocess: Preprocess | None, micro_batch: int = DEFAULT_MICRO_BATCH) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.micro_batch = micro_batch
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def freeze(self) -> "RewardModel":
        self.requires_grad_(False)
        self.eval()
        return self

    def weight_device(self) -> torch.device:
        """Where the weights are now (ComfyUI's model manager may have moved them)."""
        return next(self.parameters()).device

    def weight_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute backbone activations in backward instead of storing them."""
        raise NotImplementedError

    def encode_text(self, prompt: str) -> Any:
        """Text features for one prompt (called without gradients)."""
        raise NotImplementedError

    def score_pixels(self, pixels: torch.Tensor, text: Any) -> torch.Tensor:
        """Scores `[N]` for preprocessed pixels `[N,3,S,S]` in the model dtype."""
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings `[N,D]` of preprocessed pixels (where `embeds`)."""
        raise NotImplementedError(f"{self.label} has no image embedding")

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Image embeddings `[F,D]` (float32) of frames `[F,3,H,W]` in 0..1, as this reward's image encoder sees them."""
        check_frames(frames)
        return self.per_chunk(frames, self.embed_pixels)

    def text_features(self, prompt: str) -> Any:
        if not self.uses_prompt:
            return None
        key = prompt
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = self.encode_text(prompt)
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(key)
        cached = self._text_cache[key]
        return _to_device(cached, self.weight_device())

    def per_chunk(self, frames: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`fn` on the preprocessed pixels (weights' device and dtype) of `micro_batch` frames at a time, concatenated
        in float32."""
        device, dtype = self.weight_device(), self.weight_dtype()
        chunks = frames.split(max(1, self.micro_batch))
        return torch.cat([fn(self.preprocess(chunk.to(device)).to(dtype)).float() for chunk in chunks])

    def forward(self, frames: torch.Tensor, prompt: str = "") -> torch.Tensor:
        check_frames(frames)
        text = self.text_features(prompt)
        return self.per_chunk(frames, lambda pixels: self.score_pixels(pixels, text))


class ImageTower:
    """What a reward built on a transformers image tower shares: `backbone` is the tower, its embedding the output's
    `output_field`; activation checkpointing acts on the tower."""

    embeds = True
    backbone: nn.Module
    output_field: str

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.backbone, self.backbone, enabled)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return model_output(self.backbone(pixel_values=pixels), self.output_field)


class ClipReward(RewardModel):
    """A reward of the whole clip: `forward(frames [F,3,H,W] in 0..1, prompt)` gives one score `[1]` (float32).

    It scores `clip_frames` evenly spaced frames of the clip (ends included; None: all of them) and needs at least
    `min_frames`; `score_clip` may fill `last_sub_scores` with named sub-scores."""

    per_clip = True
    clip_frames: int | None
    min_frames = 1

    def __init__(
        self, preprocess: Preprocess | None = None, clip_frames: int | None = None, micro_batch: int = DEFAULT_MICRO_BATCH
    ) -> None:
        super().__init__(preprocess, micro_batch)
        if clip_frames is not None and clip_frames < self.min_frames:
            raise ValueError(f"{self.label} needs at least {self.min_frames} frames, clip_frames is {clip_frames}")
        self.clip_frames = clip_frames
        self.last_sub_scores: dict[str, float] = {}

    def score_clip(self, frames: torch.Tensor, text: Any) -> torch.Tensor:
        """The clip's score (a scalar or `[1]`) from its chosen frames `[K,3,H,W]`, on the frames' device."""
        raise NotImplementedError

    def forward(self, frames: torch.Tensor, prompt: str = "") -> torch.Tensor:
        check_frames(frames)
        if self.clip_frames is not None:
            frames = frames[select_frames(frames.shape[0], "evenly", self.clip_frames)]
        if frames.shape[0] < self.min_frames:
            raise ValueError(f"{self.label} needs a clip of at least {self.min_frames} frames, got {frames.shape[0]}")
        self.last_sub_scores = {}
        return self.score_clip(frames, self.text_features(prompt)).float().reshape(1)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return value
