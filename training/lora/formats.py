"""Reading and writing LoRA files in the three formats in play, with their alpha/rank scaling.

- `videox`: the published reward LoRAs (VideoX-Fun / EasyAnimate, kohya style): `lora_unet__<flattened original
  name>.lora_down.weight / .lora_up.weight / .alpha`. Read also with ComfyUI's single underscore `lora_unet_`.
- `comfyui`: `diffusion_model.<original name>.lora_down.weight / .lora_up.weight / .alpha`, the keys ComfyUI's
  native models take without any conversion.
- `diffusers`: `transformer.<diffusers name>.lora_A.weight / .lora_B.weight`, the form peft and diffusers'
  `load_lora_weights` use; ranks and alphas go into the `lora_adapter_metadata` header entry as diffusers writes it.

In memory a LoRA is a family plus, per original module name, `down [r, in]`, `up [out, r]` and `alpha`; its
delta is `strength * (alpha / r) * up @ down`, with a scale of 1 when a file has no alpha (as ComfyUI does).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ...reward.files import read_safetensors, write_safetensors_atomic
from .keymap import FAMILY_LABELS, LoraKeyError, detect_family, flatten, to_diffusers

FORMATS = ("videox", "comfyui", "diffusers")
METADATA_KEY = "lora_adapter_metadata"
PREFIX = "transformer."
_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
}


class LoraFormatError(ValueError):
    """A file that is not a LoRA, or a LoRA whose tensors do not fit together."""


@dataclass
class LoraModule:
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        """alpha / rank; 1 when the file carries no alpha."""
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def delta(self, strength: float = 1.0) -> torch.Tensor:
        """`strength * scale * up @ down` in float32, shaped `[out, in]`."""
        return (strength * self.scale) * (self.up.flatten(1).float() @ self.down.flatten(1).float())


@dataclass
class Lora:
    """A LoRA for one model family, keyed by the family's original module names."""

    family: str
    modules: dict[str, LoraModule]
    source_format: str = ""

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family]

    def summary(self) -> str:
        ranks = Counter(m.rank for m in self.modules.values())
        alphas = Counter(m.alpha for m in self.modules.values())
        return (
            f"{self.label} LoRA, {len(self.modules)} modules, rank {'/'.join(map(str, ranks))}, "
            f"alpha {'/'.join('none' if a is None else f'{a:g}' for a in alphas)} ({self.source_format} format)"
        )


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _strip_prefix(stems: list[str]) -> tuple[str, list[str], bool]:
    """(format, stems without prefix, whether they are flattened)."""
    for prefix, fmt, flat in (("lora_unet__", "videox", True), ("lora_unet_", "videox", True),
                              ("diffusion_model.", "comfyui", False), (PREFIX, "diffusers", False),
                              ("base_model.model.", "diffusers", False)):
        if stems and all(s.startswith(prefix) for s in stems):
            return fmt, [s[len(prefix):] for s in stems], flat
    return "diffusers", stems, False


def _metadata_alphas(metadata: Mapping[str, str], name: str) -> tuple[float | None, dict[str, float]]:
    """The default alpha and the per-module alphas a diffusers/peft header gives, as numbers."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None, {}
    try:
        config = {k.removeprefix(PREFIX): v for k, v in json.loads(raw).items()}
        alpha = config.get("lora_alpha")
        pattern = {k: float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
        return (float(alpha) if alpha is not None else None), pattern
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise LoraFormatError(f"{name}: the {METADATA_KEY} header entry does not give numeric alphas ({err})") from err


def parse_lora(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], name: str) -> Lora:
    """A Lora from a LoRA state dict in any of the formats; errors say what is wrong with the file."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, dict[str, str]] = {}
    strangers = []
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            strangers.append(key)
            continue
        parts.setdefault(split[0], {})[split[1]] = tensor
        keys.setdefault(split[0], {})[split[1]] = key
    if strangers:
        kind = "model weights" if any(k.endswith((".weight", ".bias")) for k in strangers) else "tensors that are not LoRA"
        raise LoraFormatError(f"{name} is not a LoRA file: it holds {kind} (e.g. {', '.join(sorted(strangers)[:3])})")
    if not parts:
        raise LoraFormatError(f"{name} holds no tensors")
    fmt, stems, flat = _strip_prefix(list(parts))
    try:
        family, originals = detect_family(stems, flat=flat)
    except LoraKeyError as err:
        raise LoraFormatError(f"{name}: {err}") from err
    default_alpha, alpha_pattern = _metadata_alphas(metadata, name)
    modules: dict[str, LoraModule] = {}
    for key, stem in zip(parts, stems):
        tensors = parts[key]
        if "down" not in tensors or "up" not in tensors:
            missing = "up" if "up" not in tensors else "down"
            raise LoraFormatError(f"{name}: {key} has no lora_{missing} weight (truncated or incomplete LoRA)")
        down, up = tensors["down"], tensors["up"]
        _check_pair(name, keys[key], down, up)
        if "alpha" in tensors:
            alpha: float | None = _alpha_value(name, keys[key]["alpha"], tensors["alpha"])
        elif fmt == "diffusers":
            alpha = alpha_pattern.get(stem, default_alpha)
            if alpha is not None and not math.isfinite(alpha):
                raise LoraFormatError(f"{name}: the {METADATA_KEY} header gives {key} a non-finite alpha ({alpha})")
        else:
            alpha = None
        modules[originals[stem]] = LoraModule(down, up, alpha)
    return Lora(family, modules, fmt)


def _check_pair(name: str, keys: Mapping[str, str], down: torch.Tensor, up: torch.Tensor) -> None:
    """Refuse a down/up pair that cannot form `up @ down`: not matrices, rank 0, ranks that disagree, NaN or inf."""
    for part, tensor in (("down", down), ("up", up)):
        if tensor.dim() < 2:
            raise LoraFormatError(f"{name}: {keys[part]} has shape {list(tensor.shape)}; a LoRA {part} weight is a matrix")
    if down.shape[0] == 0 or up.shape[1] == 0:
        raise LoraFormatError(
            f"{name}: {keys['down']} has rank 0 (lora_down {list(down.shape)}, lora_up {list(up.shape)}); "
            "a LoRA needs rank 1 or more"
        )
    if down.shape[0] != up.shape[1]:
        raise LoraFormatError(
            f"{name}: rank mismatch between {keys['down']} (rank {down.shape[0]}, shape {list(down.shape)}) and "
            f"{keys['up']} (rank {up.shape[1]}, shape {list(up.shape)})"
        )
    for part, tensor in (("down", down), ("up", up)):
        finite = torch.isfinite(tensor.float())  # in float32: isfinite has no float8 kernels
        if not finite.all():
            bad = int((~finite).sum())
            raise LoraFormatError(
                f"{name}: {keys[part]} holds {bad} NaN or infinite values; the LoRA was refused (a diverged training run?)"
            )


def _alpha_value(name: str, key: str, alpha: torch.Tensor) -> float:
    """The one finite number an alpha tensor holds."""
    if alpha.numel() != 1:
        raise LoraFormatError(f"{name}: {key} has shape {list(alpha.shape)}; an alpha is a single number")
    value = float(alpha.reshape(()))
    if not math.isfinite(value):
        raise LoraFormatError(f"{name}: {key} is {value}; the LoRA was refused (an alpha must be a finite number)")
    return value


def read_lora(path: Path) -> Lora:
    """Read a LoRA `.safetensors` file (any of the formats)."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise LoraFormatError(f"{path.name}: LoRA files are read from .safetensors only")
    try:
        tensors, metadata = read_safetensors(path)
    except Exception as err:  # the reader's own error names the file and the cause
        raise LoraFormatError(str(err)) from err
    return parse_lora(tensors, metadata, path.name)


def lora_state_dict(lora: Lora, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of `lora` in format `fmt`."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    if fmt in ("videox", "comfyui"):
        for name, module in lora.modules.items():
            stem = f"lora_unet__{flatten(name)}" if fmt == "videox" else f"diffusion_model.{name}"
            alpha = module.alpha if module.alpha is not None else float(module.rank)
            tensors[f"{stem}.lora_down.weight"] = module.down
            tensors[f"{stem}.lora_up.weight"] = module.up
            tensors[f"{stem}.alpha"] = torch.tensor(alpha, dtype=module.down.dtype)
        return tensors, metadata
    if fmt != "diffusers":
        raise ValueError(f"unknown LoRA format '{fmt}'; choose one of {', '.join(FORMATS)}")
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for name, module in lora.modules.items():
        target = to_diffusers(lora.family, name)
        if target is None:
            raise LoraKeyError(f"{name} has no diffusers name in {lora.label}")
        tensors[f"{PREFIX}{target}.lora_A.weight"] = module.down
        tensors[f"{PREFIX}{target}.lora_B.weight"] = module.up
        ranks[target] = module.rank
        alphas[target] = module.alpha if module.alpha is not None else float(module.rank)
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(ranks),
        "rank_pattern": {k: v for k, v in ranks.items() if v != rank},
        "alpha_pattern": {k: v for k, v in alphas.items() if v != alpha},
    }
    metadata[METADATA_KEY] = json.dumps({PREFIX + k: v for k, v in config.items()}, sort_keys=True)
    metadata["format"] = "pt"
    return tensors, metadata


def write_lora(lora: Lora, path: Path, fmt: str) -> Path:
    """Write `lora` in format `fmt` to `path`, atomically."""
    tensors, metadata = lora_state_dict(lora, fmt)
    write_safetensors_atomic(tensors, path, metadata)
    return path
