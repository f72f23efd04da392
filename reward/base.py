"""The one interface every reward model has: frames in 0..1 plus a prompt in, a differentiable score per frame out."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

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


class RewardModel(nn.Module):
    """A frozen preference model. `forward(frames [F,3,H,W] in 0..1, prompt)` gives scores `[F]` (float32).

    Gradients flow to the frames; the model's own weights stay frozen. Frames are scored in micro-batches of
    `micro_batch` (set by `registry.load_reward`, from the loader node's setting): the one place that decides how
    many frames go through one forward. Text features are computed once per prompt without gradients and cached.
    """

    label = "reward"
    uses_prompt = True

    def __init__(self, preprocess: Preprocess, micro_batch: int = DEFAULT_MICRO_BATCH) -> None:
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

    def forward(self, frames: torch.Tensor, prompt: str = "") -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [F,3,H,W] in 0..1, got shape {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise ValueError("no frames to score")
        text = self.text_features(prompt)
        device, dtype = self.weight_device(), self.weight_dtype()
        scores = []
        for chunk in frames.split(max(1, self.micro_batch)):
            pixels = self.preprocess(chunk.to(device)).to(dtype)
            scores.append(self.score_pixels(pixels, text).float())
        return torch.cat(scores)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return value
