"""Nodes for reward LoRAs on ComfyUI's native models (Wan2.1/2.2), and for baking and converting LoRA files."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from comfy_api.latest import io, ui

from ..training.lora.formats import FORMATS, Lora, lora_state_dict, read_lora, write_lora
from ..training.lora.adapters import check_modules
from ..training.lora.keymap import FAMILY_LABELS, WAN, fits
from ..training.lora.merge import bake, bake_shards, shard_index
from ..reward.files import output_path
from .folders import lora_path
from .types import LoadedVideoModel, VideoModelType

CATEGORY = "video reward/lora"
NONE = "none"
DEFAULT_STRENGTH = 0.7  # the strength the seeds' demos use
_EXPERT = {"high": re.compile(r"high[-_ ]?noise", re.I), "low": re.compile(r"low[-_ ]?noise", re.I)}


def _lora_choices() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


def apply_to_native(model, lora_name: str, strength: float, expert: str | None = None) -> tuple[object, str]:
    """(patched clone of a native ComfyUI model, report) through ComfyUI's own LoRA loading and patching."""
    import comfy.lora
    import comfy.sd

    lora = read_lora(lora_path(lora_name))
    if lora.family != WAN:
        raise ValueError(
            f"{lora_name} is a {lora.label} reward LoRA; ComfyUI's native models take Wan2.1/2.2 LoRAs. "
            f"Apply {lora.label} LoRAs to models loaded by this pack's {lora.label} loader."
        )
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    matched = 0
    for name, module in lora.modules.items():
        key = f"diffusion_model.{name}"
        if key not in key_map:
            continue
        shape = tuple(weights[key_map[key]].shape)
        if shape[:2] != (module.up.shape[0], module.down.shape[1]):
            raise ValueError(
                f"{lora_name} does not fit this model: {name} is {shape[0]}x{shape[1]} in the model but "
                f"{module.up.shape[0]}x{module.down.shape[1]} in the LoRA (a LoRA for another Wan size?)"
            )
        matched += 1
    if matched == 0:
        raise ValueError(f"none of the {len(lora.modules)} modules of {lora_name} exist in this model; is it a Wan model?")
    state, _ = lora_state_dict(lora, "comfyui")
    patched, _ = comfy.sd.load_lora_for_models(model, None, state, strength, 0)
    report = f"{lora_name}: {lora.summary()}; {matched}/{len(lora.modules)} modules matched, strength {strength:g}"
    other = {"high": "low", "low": "high"}.get(expert or "")
    if other and _EXPERT[other].search(Path(lora_name).name):
        warning = f"{lora_name} is named for the {other}-noise expert but was applied to the {expert}-noise model"
        logging.warning(warning)
        report += f"\nWARNING: {warning}"
    if matched < len(lora.modules):
        report += f"\nWARNING: {len(lora.modules) - matched} modules have no weight in this model and were skipped"
    return patched, report


def _lora_input(name: str, tooltip: str, allow_none: bool = False) -> io.Combo.Input:
    options = ([NONE] if allow_none else []) + _lora_choices()
    return io.Combo.Input(name, options=options, tooltip=tooltip)


def _strength_input(name: str, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=DEFAULT_STRENGTH, min=-10.0, max=10.0, step=0.05, tooltip=tooltip)


class WanRewardLoraPair(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanRewardLoraPair",
            display_name="Wan2.2 Reward LoRA (high + low)",
            category=CATEGORY,
            description="Patches both Wan2.2 A14B experts with their reward LoRAs (each its own file and strength).",
            inputs=[
                io.Model.Input("model_high", tooltip="The high-noise expert (e.g. wan2.2_..._high_noise_14B)."),
                io.Model.Input("model_low", tooltip="The low-noise expert (e.g. wan2.2_..._low_noise_14B)."),
                _lora_input("lora_high", "Reward LoRA for the high-noise expert, e.g. Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors.", True),
                _strength_input("strength_high", "Strength of the high-noise LoRA (the seeds use 0.5-0.7)."),
                _lora_input("lora_low", "Reward LoRA for the low-noise expert, e.g. Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors.", True),
                _strength_input("strength_low", "Strength of the low-noise LoRA (the seeds use 0.5-0.7)."),
            ],
            outputs=[
                io.Model.Output(display_name="model_high"),
                io.Model.Output(display_name="model_low"),
                io.String.Output(display_name="report", tooltip="What was loaded and how many modules matched."),
            ],
        )

    @classmethod
    def execute(cls, model_high, model_low, lora_high: str, strength_high: float, lora_low: str, strength_low: float) -> io.NodeOutput:
        reports = []
        outputs = []
        for model, lora_name, strength, expert in ((model_high, lora_high, strength_high, "high"), (model_low, lora_low, strength_low, "low")):
            if lora_name == NONE:
                outputs.append(model)
                reports.append(f"{expert}-noise expert: no LoRA")
                continue
            patched, report = apply_to_native(model, lora_name, strength, expert)
            outputs.append(patched)
            reports.append(f"{expert}-noise expert: {report}")
        text = "\n".join(reports)
        return io.NodeOutput(*outputs, text, ui=ui.PreviewText(text))


class RewardLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardLoraLoader",
            display_name="Reward LoRA Loader",
            category=CATEGORY,
            description="Patches one native ComfyUI model (e.g. a Wan2.1/2.2 model) with a reward LoRA in any supported format.",
            inputs=[
                io.Model.Input("model", tooltip="A native ComfyUI diffusion model."),
                _lora_input("lora", "The reward LoRA (published, ComfyUI or diffusers format)."),
                _strength_input("strength", "LoRA strength (the seeds use 0.5-0.7)."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, lora: str, strength: float) -> io.NodeOutput:
        patched, report = apply_to_native(model, lora, strength)
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


def _output_name_input(default: str, tooltip: str) -> io.String.Input:
    return io.String.Input("filename", default=default, tooltip=tooltip)


class BakeRewardLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="BakeRewardLora",
            display_name="Bake Reward LoRA into Checkpoint",
            category=CATEGORY,
            description="Writes a copy of a diffusion-model checkpoint with a LoRA merged in (same keys and dtypes; fp8 "
            "weights are merged in float32 and re-quantised), into the output folder.",
            inputs=[
                io.Combo.Input("checkpoint", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The checkpoint (.safetensors) from models/diffusion_models. Choosing one shard "
                               "of a sharded checkpoint (name-0000N-of-0000M.safetensors next to its .index.json) bakes "
                               "all shards into a folder named by 'filename'."),
                _lora_input("lora", "The reward LoRA to merge."),
                _strength_input("strength", "Strength to merge at."),
                _output_name_input("baked/model_reward.safetensors", "File name under the output folder."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name (for a "
                                 "sharded checkpoint, the folder of that name)."),
            ],
            outputs=[io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, checkpoint: str, lora: str, strength: float, filename: str, overwrite: bool) -> io.NodeOutput:
        import comfy.utils
        import folder_paths

        source = Path(folder_paths.get_full_path_or_raise("diffusion_models", checkpoint))
        output = Path(folder_paths.get_output_directory())
        bar = comfy.utils.ProgressBar(1)
        progress = lambda done, total: bar.update_absolute(done, total)  # noqa: E731
        index = shard_index(source)
        if index is None:
            target = output_path(output, filename, ".safetensors", overwrite)
            result = bake(source, read_lora(lora_path(lora)), strength, target, progress)
        else:
            target = output_path(output, filename.removesuffix(".safetensors"), "", overwrite)
            result = bake_shards(index, read_lora(lora_path(lora)), strength, target, progress, overwrite)
        text = f"wrote {target}\n{result.describe()}"
        return io.NodeOutput(text, ui=ui.PreviewText(text))


class ConvertRewardLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConvertRewardLora",
            display_name="Convert Reward LoRA",
            category=CATEGORY,
            description="Writes a LoRA in another format into models/loras: the published VideoX-Fun format, ComfyUI's "
            "native keys, or diffusers/peft keys (ranks and alphas in the file header).",
            inputs=[
                _lora_input("lora", "The LoRA to convert."),
                io.Combo.Input("format", options=list(FORMATS), default="comfyui",
                               tooltip="videox: lora_unet__ keys as published; comfyui: diffusion_model. keys; "
                               "diffusers: transformer.*.lora_A/B keys for diffusers and peft."),
                _output_name_input("converted/reward_lora.safetensors", "File name under models/loras."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name."),
            ],
            outputs=[io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora: str, format: str, filename: str, overwrite: bool) -> io.NodeOutput:
        import folder_paths

        source: Lora = read_lora(lora_path(lora))
        target = output_path(Path(folder_paths.get_folder_paths("loras")[0]), filename, ".safetensors", overwrite)
        write_lora(source, target, format)
        text = f"wrote {target} ({format} format): {source.summary()}"
        return io.NodeOutput(text, ui=ui.PreviewText(text))


class VideoModelRewardLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoModelRewardLora",
            display_name="Reward LoRA for Video Model",
            category=CATEGORY,
            description="Adds a reward LoRA at a strength to a pack-loaded CogVideoX-Fun or EasyAnimate model. It is attached while that "
            "model samples and removed after, so the loaded weights never change and other branches see the base model.",
            inputs=[
                VideoModelType.Input("model", tooltip="From Load CogVideoX-Fun / Load EasyAnimate (or another Reward LoRA for Video Model)."),
                _lora_input("lora", "The reward LoRA, e.g. CogVideoX-Fun-V1.1-5b-InP-HPS2.1.safetensors."),
                _strength_input("strength", "LoRA strength (the seeds' demos use 0.7)."),
            ],
            outputs=[VideoModelType.Output(display_name="model"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model: LoadedVideoModel, lora: str, strength: float) -> io.NodeOutput:
        loaded = read_lora(lora_path(lora))
        family = model.family.lora_family
        if not fits(family, loaded.modules):
            raise ValueError(f"{lora} is a {loaded.label} reward LoRA; the model is {FAMILY_LABELS[family]}")
        try:
            check_modules(model.family.transformer, loaded, family)
        except ValueError as err:
            raise ValueError(f"{lora}: {err}") from err
        report = f"{lora}: {loaded.summary()}; {len(loaded.modules)}/{len(loaded.modules)} modules matched, strength {strength:g}"
        return io.NodeOutput(model.with_lora(loaded, strength, lora), report, ui=ui.PreviewText(report))


NODES: list[type[io.ComfyNode]] = [WanRewardLoraPair, RewardLoraLoader, VideoModelRewardLora, BakeRewardLora, ConvertRewardLora]
