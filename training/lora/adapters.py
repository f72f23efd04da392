"""Applying LoRAs to diffusers transformers (CogVideoX-Fun, EasyAnimate, Wan) as peft adapter layers.

The base weights are never modified while an adapter is attached: the LoRA runs beside each Linear, scaled by
`strength * alpha / r`, so changing the strength or removing the LoRA returns exactly to the base model.
`merge` folds an adapter into the weights for speed and hands back copies of the weights it changed (on the
CPU by default, as ComfyUI's model patcher keeps its backups); `unmerge` puts those copies back, so the
weights are restored bit for bit however often strengths or LoRAs are switched.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .formats import Lora
from .keymap import FAMILY_LABELS, fits, to_diffusers


def adapter_config(lora: Lora):
    """A peft LoraConfig targeting exactly the LoRA's modules (diffusers names) with their ranks and alphas."""
    from peft import LoraConfig

    names = {to_diffusers(lora.family, name): module for name, module in lora.modules.items()}
    rank = Counter(m.rank for m in names.values()).most_common(1)[0][0]
    alphas = {n: (m.alpha if m.alpha is not None else float(m.rank)) for n, m in names.items()}
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=sorted(names),
        rank_pattern={f"^{n}$": m.rank for n, m in names.items() if m.rank != rank},
        alpha_pattern={f"^{n}$": a for n, a in alphas.items() if a != alpha},
        init_lora_weights=False,
    )


def check_modules(model: nn.Module, lora: Lora, family: str) -> None:
    """Raise ValueError unless every LoRA module is a Linear of `model` with the LoRA's input and output widths."""
    modules = dict(model.named_modules())
    missing = [n for n in lora.modules if to_diffusers(family, n) not in modules]
    if missing:
        raise ValueError(f"{len(missing)} LoRA modules are not in this model (e.g. {', '.join(missing[:3])}); another model size?")
    for name, module in lora.modules.items():
        layer = modules[to_diffusers(family, name)]
        if (layer.out_features, layer.in_features) != (module.up.shape[0], module.down.flatten(1).shape[1]):
            raise ValueError(f"the LoRA does not fit this model at {name} (a LoRA for another model size?)")


def attach(model: nn.Module, lora: Lora, family: str, adapter: str = "reward", strength: float = 1.0) -> int:
    """Attach `lora` to a diffusers transformer of `family` as adapter `adapter`; returns the modules matched.

    Raises ValueError when the LoRA is for another family or names modules the model does not have."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    if not fits(family, lora.modules):
        raise ValueError(f"this is a {lora.label} LoRA; the model is {FAMILY_LABELS[family]}")
    if family != lora.family:
        lora = Lora(family, lora.modules, lora.source_format)
    check_modules(model, lora, family)
    inject_adapter_in_model(adapter_config(lora), model, adapter_name=adapter)
    state = {}
    for name, module in lora.modules.items():
        target = to_diffusers(family, name)
        state[f"{target}.lora_A.weight"] = module.down
        state[f"{target}.lora_B.weight"] = module.up
    result = set_peft_model_state_dict(model, state, adapter_name=adapter)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"LoRA weights did not load into the model: {unexpected[:3]}")
    set_strength(model, adapter, strength)
    return len(lora.modules)


def _lora_layers(model: nn.Module, adapter: str):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


def set_strength(model: nn.Module, adapter: str, strength: float) -> None:
    """Scale an attached adapter to `strength` (its delta becomes strength * alpha / r * B A); exact, no drift."""
    layers = _lora_layers(model, adapter)
    if not layers:
        raise ValueError(f"no LoRA adapter named '{adapter}' is attached")
    for layer in layers:
        layer.set_scale(adapter, strength)


@contextmanager
def disabled(model: nn.Module) -> Iterator[None]:
    """Inside, every LoRA layer of `model` runs its base layer alone (peft's adapter disabling): the base model's
    exact outputs, with no second copy of its weights."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def detach(model: nn.Module, adapter: str) -> None:
    """Remove an adapter; the base weights are as they were before `attach`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in _lora_layers(model, adapter):
        if isinstance(layer, BaseTunerLayer):
            if adapter in layer.merged_adapters:
                layer.unmerge()
            layer.delete_adapter(adapter)


def merge(model: nn.Module, adapter: str, backup_device: str = "cpu") -> dict[str, torch.Tensor]:
    """Fold the adapter (at its current strength) into the base weights; returns the original weights."""
    backups = {}
    layers = {id(layer) for layer in _lora_layers(model, adapter)}
    for name, layer in model.named_modules():
        if id(layer) in layers:
            backups[name] = layer.get_base_layer().weight.detach().to(backup_device, copy=True)
            layer.merge(adapter_names=[adapter])
    return backups


def unmerge(model: nn.Module, adapter: str, backups: dict[str, torch.Tensor]) -> None:
    """Undo `merge` exactly, from the weights it returned."""
    layers = dict(model.named_modules())
    for name, weight in backups.items():
        layer = layers[name]
        if adapter in layer.merged_adapters:
            layer.unmerge()
        with torch.no_grad():
            layer.get_base_layer().weight.copy_(weight)


@contextmanager
def attached(model: nn.Module, family: str, loras: Sequence[tuple[Lora, float]]) -> Iterator[int]:
    """Attach several LoRAs at their strengths for the duration of a block, then remove them (weights untouched)."""
    names = [f"reward_{i}" for i in range(len(loras))]
    matched = 0
    try:
        for name, (lora, strength) in zip(names, loras):
            matched += attach(model, lora, family, name, strength)
        yield matched
    finally:
        for name in names:
            detach(model, name)


def trainable_targets(model: nn.Module, family: str, targets: Sequence[str] = (), skip: Sequence[str] = ()) -> list[str]:
    """Diffusers names of the Linear layers a new reward LoRA trains: those with a published (original) name,
    containing one of `targets` (all when empty) and none of `skip` (substrings of the original name)."""
    from .keymap import from_diffusers

    chosen = []
    for name, module in model.named_modules():
        original = from_diffusers(family, name) if isinstance(module, nn.Linear) else None
        if original and (not targets or any(t in original for t in targets)) and not any(s in original for s in skip):
            chosen.append(name)
    if not chosen:
        raise ValueError(f"no {FAMILY_LABELS[family]} layer matches the LoRA targets {list(targets)} (skipping {list(skip)})")
    return chosen


def add_trainable(model: nn.Module, family: str, rank: int, alpha: float, targets: Sequence[str] = (),
                  skip: Sequence[str] = (), adapter: str = "reward_train") -> dict[str, nn.Parameter]:
    """Inject a fresh LoRA (B = 0, so training starts from the base model); returns its float32 parameters by name."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=trainable_targets(model, family, targets, skip),
                        init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=adapter)
    params = {}
    for name, param in model.named_parameters():
        if f".{adapter}." in name and "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
            params[name] = param
    return params


def export(model: nn.Module, family: str, adapter: str = "reward_train", dtype: torch.dtype | None = None) -> Lora:
    """The adapter as a `Lora` keyed by the family's original names, ready to write in the published format."""
    from ..distributed.sharding import full
    from .formats import LoraModule
    from .keymap import from_diffusers

    modules = {}
    for name, layer in model.named_modules():
        if name and hasattr(layer, "lora_A") and adapter in layer.lora_A:
            down, up = full(layer.lora_A[adapter].weight.detach()), full(layer.lora_B[adapter].weight.detach())
            modules[from_diffusers(family, name)] = LoraModule(
                down.to(dtype or down.dtype).cpu().contiguous(), up.to(dtype or up.dtype).cpu().contiguous(),
                float(layer.lora_alpha[adapter]))
    if not modules:
        raise ValueError(f"no adapter '{adapter}' is attached")
    return Lora(family, modules, "trained")
