"""Custom ComfyUI types of the pack, and the objects that travel on their links."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io

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
