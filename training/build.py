"""From a training config to loaded objects: the video model family and the reward (with its loss settings)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..reward.composite import CompositeReward, RewardTerm
from ..reward.registry import load_reward
from .config import WAN_FILES, RewardChoice, TrainConfig
from .families import family_class
from .families.base import VideoFamily

if TYPE_CHECKING:
    from .preference.config import PairsConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU (the seeds' setting; fp16 breaks Wan), fp32 on the CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[precision]


def load_family(config: "TrainConfig | PairsConfig", dtype: torch.dtype, device: torch.device, sharded: bool = False) -> VideoFamily:
    """The config's model, loaded strictly from its files, on `device`. With `sharded` the transformers stay on the
    CPU, for `sharding.shard` to move only this process's slice of them to `device`; so they do with the memory
    options `fp8_base` and `block_swap`, for the engine to quantise or swap them before they reach `device` (a
    transformer loaded whole onto the device first would need its full size there)."""
    on_host = sharded or bool(getattr(config, "fp8_base", False) or getattr(config, "block_swap", 0))
    family = _load_family(config, dtype, torch.device("cpu") if on_host else device, config.offload_idle_expert and not sharded)
    if on_host:
        from .families.memory import apply_memory_mode, components

        apply_memory_mode(family, "full", device, [name for name in components(family) if name not in family.transformers])
    return family


def _load_family(config: "TrainConfig | PairsConfig", dtype: torch.dtype, device: torch.device, offload_idle: bool) -> VideoFamily:
    family = family_class(config.family)
    if config.family == "wan2.2":
        files = {k: Path(config.model[k]) for k in WAN_FILES}
        return family.load(**files, dtype=dtype, device=device, shift=config.shift, offload_idle=offload_idle)
    return family.load(Path(config.model["folder"]), dtype=dtype, device=device)


@dataclass
class RewardObjective:
    """The reward to maximise and how its per-video value becomes a loss."""

    reward: CompositeReward
    form: str
    target: float
    scale: float


def load_reward_mix(choices: Sequence[RewardChoice], roots: Sequence[str], dtype: torch.dtype, device: torch.device,
                    gradient_checkpointing: bool = False) -> CompositeReward:
    """One reward as it is (times its weight), or a weighted mix of rewards normalised by their typical mean and spread."""
    models = [load_reward(c.key, [Path(r) for r in roots], c.checkpoint, c.encoder, dtype, device) for c in choices]
    for model in models:
        model.set_gradient_checkpointing(gradient_checkpointing)
    if len(models) == 1:
        return CompositeReward([RewardTerm(models[0], choices[0].weight)])
    return CompositeReward([RewardTerm(m, c.weight, *m.spec.norm) for m, c in zip(models, choices)])


def load_objective(config: TrainConfig, dtype: torch.dtype, device: torch.device) -> RewardObjective:
    """The config's reward mix and its loss: one reward with its own loss target and scale, a mix with target 1."""
    reward = load_reward_mix(config.rewards, config.reward_roots, dtype, device, config.gradient_checkpointing)
    if len(reward.terms) == 1:
        spec = reward.terms[0].model.spec
        target = spec.loss_target if config.loss_target is None else config.loss_target
        return RewardObjective(reward, config.loss, target, spec.loss_scale)
    return RewardObjective(reward, config.loss, 1.0 if config.loss_target is None else config.loss_target, 1.0)
