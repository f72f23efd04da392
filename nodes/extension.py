"""The pack's ComfyExtension: every node it offers."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .lora import NODES as LORA_NODES
from .preference import NODES as PREFERENCE_NODES
from .reward import NODES as REWARD_NODES
from .sampling import NODES as SAMPLING_NODES
from .training import NODES as TRAINING_NODES


class VideoRewardExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*REWARD_NODES, *LORA_NODES, *SAMPLING_NODES, *TRAINING_NODES, *PREFERENCE_NODES]
