"""Where a video family's weights live while it samples, so that large models fit a small GPU (with accelerate).

- "full": every component on the execution device.
- "model offload": components wait on the CPU; each moves to the execution device when it runs, and the one before
  it in the order text encoder(s), transformer(s), VAE moves back then (as diffusers' model CPU offload does).
- "sequential offload": the weights stay on the CPU and each layer's weights are copied to the execution device
  only for its own forward; the slowest mode and the one that needs the least GPU memory.

Families must put their inputs on `family.device` and never read a module's device: under sequential offload the
module parameters are meta tensors. The modes are for sampling (no gradients through offloaded weights).
"""
from __future__ import annotations

from typing import Collection

import torch
from torch import nn

from .base import VideoFamily

MEMORY_MODES = ("full", "model offload", "sequential offload")


def check_memory_mode(mode: str) -> None:
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; expected one of: {', '.join(repr(m) for m in MEMORY_MODES)}")


def components(family: VideoFamily) -> dict[str, nn.Module]:
    """The family's modules by name, in the order they run: text encoder(s), transformer(s), VAE."""
    return {**{f"text_encoder:{key}": module for key, module in family.text_encoders.items()},
            **family.transformers, "vae": family.vae}


class MemoryPlacement:
    """The components a memory mode was applied to; `release` (or leaving the `with` block) removes the hooks and
    puts the weights back on the offload device. Release before applying another mode."""

    def __init__(self, modules: dict[str, nn.Module], offload_device: torch.device) -> None:
        self.modules = modules
        self.offload_device = offload_device

    def release(self) -> None:
        from accelerate.hooks import remove_hook_from_module

        for module in self.modules.values():
            remove_hook_from_module(module, recurse=True)  # restores offloaded weights from their CPU copies
            module.to(self.offload_device)

    def __enter__(self) -> "MemoryPlacement":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def apply_memory_mode(
    family: VideoFamily,
    mode: str,
    execution_device: torch.device | str,
    names: Collection[str] | None = None,
    offload_device: torch.device | str = "cpu",
) -> MemoryPlacement:
    """Place the family's components (or only those in `names`, see `components`) for `mode` and make
    `execution_device` the family's compute device."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    check_memory_mode(mode)
    available = components(family)
    unknown = sorted(set(names or ()) - set(available))
    if unknown:
        raise ValueError(f"{family.name} has no component {', '.join(unknown)}; it has {', '.join(available)}")
    chosen = {name: module for name, module in available.items() if names is None or name in names}
    execution_device, offload_device = torch.device(execution_device), torch.device(offload_device)
    previous = None
    for module in chosen.values():
        if mode == "full":
            module.to(execution_device)
        elif mode == "model offload":
            _, previous = cpu_offload_with_hook(module, execution_device, prev_module_hook=previous)
        else:
            cpu_offload(module, execution_device)
    family.device = execution_device
    return MemoryPlacement(chosen, offload_device)
