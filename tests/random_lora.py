"""Random LoRAs for tests: every Linear layer of a model that has a published name, or given shapes."""
from __future__ import annotations

import torch
from torch import nn

from video_reward_lora.training.lora.adapters import trainable_targets
from video_reward_lora.training.lora.formats import Lora, LoraModule
from video_reward_lora.training.lora.keymap import from_diffusers


def linear_shapes(model: nn.Module, family: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each Linear layer with a published name, by that (original) name, in module order."""
    layers = dict(model.named_modules())
    return {from_diffusers(family, name): (layers[name].out_features, layers[name].in_features)
            for name in trainable_targets(model, family)}


def random_lora(family: str, shapes: dict[str, tuple[int, int]], generator: torch.Generator, rank: int = 2,
                down_scale: float = 0.1, up_scale: float = 0.1, alpha: float = 2.0) -> Lora:
    """Gaussian down and up matrices (drawn in that order, module by module) scaled by `down_scale` / `up_scale`."""
    return Lora(family, {name: LoraModule(torch.randn(rank, fan_in, generator=generator) * down_scale,
                                          torch.randn(fan_out, rank, generator=generator) * up_scale, alpha)
                         for name, (fan_out, fan_in) in shapes.items()})
