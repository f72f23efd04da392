"""Custom ComfyUI types of the pack, and the objects that travel on their links."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io
from torch import nn

RewardModelType = io.Custom("REWARD_MODEL")


@dataclass
class LoadedReward:
    """A reward (single or composite) plus the ComfyUI model patchers that move its weights between devices."""

    reward: Any
    patchers: list[Any] = field(default_factory=list)
    micro_batch: int = 8

    def load(self) -> None:
        """Ask ComfyUI's model manager to put the weights on the compute device (freeing others if needed)."""
        import comfy.model_management

        comfy.model_management.load_models_gpu(self.patchers)

VideoModelType = io.Custom("VIDEO_REWARD_MODEL")


class Component(nn.Module):
    """A holder for a transformers/diffusers model handed to ComfyUI's ModelPatcher, which sets a `device`
    attribute on what it manages (read-only on those classes)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@dataclass(frozen=True)
class LoadedVideoModel:
    """A pack-loaded video model (CogVideoX-Fun, EasyAnimate), its ComfyUI model patchers by component, and the
    reward LoRAs to attach while it samples. Nodes derive new values; the loaded weights are never changed."""

    family: Any
    patchers: dict[str, Any]
    loras: tuple[tuple[Any, float, str], ...] = ()

    def with_lora(self, lora: Any, strength: float, name: str) -> "LoadedVideoModel":
        return LoadedVideoModel(self.family, self.patchers, (*self.loras, (lora, strength, name)))

    def load(self, *components: str) -> None:
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.patchers[c] for c in components])
