"""Merging a LoRA into weights: one tensor, a whole checkpoint file (bake), including fp8 checkpoints.

Merges are computed in float32 and cast back to the weight's dtype. fp8 weights are dequantised first (with
ComfyUI's `scale_weight` where the checkpoint has one: 0-dim, (1,) or per output row) and re-quantised with a fresh
scale of the same shape.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...reward.files import ModelFileError, atomic_folder, atomic_path, safetensors_header
from ..scaled_fp8 import FP8, broadcast_scale, dequantise, quantise_fp8, scale_key
from .formats import Lora, LoraModule
from .keymap import to_diffusers

SHARD = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.safetensors$")
CHECKPOINT_PREFIXES = ("", "diffusion_model.", "model.diffusion_model.")


class BakeError(ValueError):
    """The LoRA does not fit the checkpoint, or the checkpoint cannot be read."""


def merged(weight: torch.Tensor, module: LoraModule, strength: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """`W + strength * (alpha / r) * up @ down` in float32 (W dequantised by `scale` if given)."""
    full = dequantise(weight, scale)
    if full.flatten(1).shape != (module.up.shape[0], module.down.flatten(1).shape[1]):
        raise BakeError(
            f"LoRA shape {module.up.shape[0]}x{module.down.flatten(1).shape[1]} does not fit a weight of shape "
            f"{tuple(weight.shape)} (a LoRA for another model size?)"
        )
    if full.data_ptr() == weight.data_ptr():
        full = full.clone()
    up, down = module.up.flatten(1).to(full), module.down.flatten(1).to(full)
    full.view(full.shape[0], -1).addmm_(up, down, alpha=strength * module.scale)
    return full


def target_keys(lora: Lora, shapes: dict[str, list[int]]) -> dict[str, str]:
    """{checkpoint weight key: original module name} for every LoRA module, under original or diffusers names.

    Raises BakeError when a module has no weight or a weight of another shape."""
    found: dict[str, str] = {}
    missing = []
    for name, module in lora.modules.items():
        candidates = [name, to_diffusers(lora.family, name) or name]
        key = next((f"{p}{c}.weight" for p in CHECKPOINT_PREFIXES for c in candidates if f"{p}{c}.weight" in shapes), None)
        if key is None:
            missing.append(name)
            continue
        expected = [module.up.shape[0], module.down.flatten(1).shape[1]]
        if [shapes[key][0], int(torch.tensor(shapes[key][1:]).prod())] != expected:
            raise BakeError(
                f"{name}: the LoRA changes a {expected[0]}x{expected[1]} weight but the checkpoint's {key} is "
                f"{'x'.join(map(str, shapes[key]))} (a LoRA for another model size?)"
            )
        found[key] = name
    if missing:
        raise BakeError(
            f"{len(missing)} of {len(lora.modules)} {lora.label} LoRA modules have no weight in the checkpoint "
            f"(e.g. {', '.join(sorted(missing)[:3])}); is it a {lora.label} checkpoint?"
        )
    return found


@dataclass
class BakeReport:
    merged_modules: int = 0
    fp8_modules: int = 0
    worst_fp8_error: float = 0.0

    def add(self, other: "BakeReport") -> None:
        self.merged_modules += other.merged_modules
        self.fp8_modules += other.fp8_modules
        self.worst_fp8_error = max(self.worst_fp8_error, other.worst_fp8_error)

    def describe(self) -> str:
        text = f"merged {self.merged_modules} modules"
        if self.fp8_modules:
            text += (
                f"; {self.fp8_modules} fp8 weights merged in float32 and re-quantised: the fp8 rounding is up to "
                f"{self.worst_fp8_error:.1%} of the LoRA's change to a weight (relative L2)"
            )
        return text


def _header(path: Path) -> dict:
    try:
        return safetensors_header(path)[0]
    except ModelFileError as err:
        raise BakeError(str(err)) from err


def bake(
    checkpoint: Path,
    lora: Lora,
    strength: float,
    output: Path,
    progress: Callable[[int, int], None] | None = None,
) -> BakeReport:
    """Write `checkpoint` with `lora` merged at `strength` to `output`: same keys, order, dtypes and metadata.

    Tensors are streamed one at a time, so memory stays near the largest tensor. The file is written to a
    temporary name in the output folder and renamed when complete; nothing is written if the LoRA does not fit."""
    from safetensors import SafetensorError, safe_open

    header = _header(checkpoint)
    metadata = header.pop("__metadata__", None) or {}
    targets = target_keys(lora, {k: v["shape"] for k, v in header.items()})
    report = BakeReport()
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    offsets, position = {}, 0
    for key in order:
        begin, end = header[key]["data_offsets"]
        offsets[key] = [position, position + end - begin]
        position += end - begin
    out_header = {k: {**header[k], "data_offsets": offsets[k]} for k in order}
    if metadata:
        out_header["__metadata__"] = metadata
    blob = json.dumps(out_header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    try:
        with atomic_path(output) as temporary, open(temporary, "wb") as out, safe_open(str(checkpoint), framework="pt") as source:
            scales = _fp8_scales(checkpoint, source, header, targets, lora, strength)
            out.write(struct.pack("<Q", len(blob)) + blob)
            for index, key in enumerate(order):
                tensor = source.get_tensor(key)
                if key in targets:
                    tensor = _merge_one(tensor, key, lora.modules[targets[key]], strength, source, scales, report)
                elif key in scales:
                    tensor = scales[key].to(tensor.dtype)
                # 0-dim tensors (ComfyUI's scales) cannot be viewed as bytes without flattening first
                out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                if progress is not None:
                    progress(index + 1, len(order))
    except SafetensorError as err:
        raise BakeError(f"{checkpoint.name} could not be read (truncated or corrupt?): {err}") from err
    return report


def _fp8_scales(
    checkpoint: Path, source, header: dict, targets: dict[str, str], lora: Lora, strength: float
) -> dict[str, torch.Tensor]:
    """New scales of scaled-fp8 weights, each of its old scale's shape (a first pass: a scale may precede its weight
    in the file)."""
    scales = {}
    for key, name in targets.items():
        if header[key]["dtype"].startswith("F8") and scale_key(key) in header:
            weight, old = source.get_tensor(key), source.get_tensor(scale_key(key))
            try:
                broadcast_scale(old, weight.shape, scale_key(key))
            except ValueError as err:
                raise BakeError(f"{checkpoint.name}: {err}") from err
            exact = merged(weight, lora.modules[name], strength, old)
            scales[scale_key(key)] = quantise_fp8(exact, weight.dtype, like=old)[1]
    return scales


def _merge_one(
    weight: torch.Tensor, key: str, module: LoraModule, strength: float, source, scales: dict[str, torch.Tensor],
    report: BakeReport,
) -> torch.Tensor:
    report.merged_modules += 1
    if weight.dtype not in FP8:
        return merged(weight, module, strength).to(weight.dtype)
    limit = torch.finfo(weight.dtype).max
    if scale_key(key) in scales:
        exact = merged(weight, module, strength, source.get_tensor(scale_key(key)))
        scale = scales[scale_key(key)]
        quantised = (exact / broadcast_scale(scale, exact.shape)).clamp(-limit, limit).to(weight.dtype)
        restored = dequantise(quantised, scale)
    else:
        exact = merged(weight, module, strength)
        quantised = exact.clamp(-limit, limit).to(weight.dtype)
        restored = quantised.float()
    change = module.delta(strength).reshape(exact.shape).norm().clamp(min=1e-12)
    report.fp8_modules += 1
    report.worst_fp8_error = max(report.worst_fp8_error, float((restored - exact).norm() / change))
    return quantised


def shard_index(checkpoint: Path) -> Path | None:
    """The `.index.json` of the sharded checkpoint `checkpoint` is one shard of (diffusers' naming), if any."""
    match = SHARD.match(checkpoint.name)
    if match is None:
        return None
    index = checkpoint.with_name(f"{match['stem']}.safetensors.index.json")
    return index if index.is_file() else None


def bake_shards(
    index: Path, lora: Lora, strength: float, folder: Path, progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> BakeReport:
    """Bake every shard of a sharded checkpoint into `folder` (shards keep their names; the index is copied).

    All shards are written to a temporary folder that replaces `folder` when complete; an existing `folder` is
    replaced only with `overwrite`, otherwise refused before anything is read or written."""
    if folder.exists() and not folder.is_dir():
        raise BakeError(f"{folder} is a file; a sharded checkpoint is baked into a folder of that name")
    if folder.exists() and not overwrite:
        raise BakeError(f"{folder} already exists; choose another name or allow overwriting")
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise BakeError(f"{index.name} is not a readable checkpoint index: {err}") from err
    shards = sorted(set(weight_map.values()))
    shapes = {}
    for shard in shards:
        header = _header(index.parent / shard)
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    targets = target_keys(lora, shapes)
    report = BakeReport()
    with atomic_folder(folder) as staging:
        for done, shard in enumerate(shards):
            part = {name: lora.modules[name] for key, name in targets.items() if weight_map[key] == shard}
            report.add(bake(index.parent / shard, Lora(lora.family, part, lora.source_format), strength, staging / shard))
            if progress is not None:
                progress(done + 1, len(shards))
        shutil.copyfile(index, staging / index.name)
    return report
