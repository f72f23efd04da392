"""Nodes that load CogVideoX-Fun models and sample videos with them (the pack's own, diffusers-based, path)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from comfy_api.latest import io

from ..reward.files import list_entries
from ..reward.seeds import MAX_SEED
from ..training.families.memory import MEMORY_MODES, apply_memory_mode, check_memory_mode
from ..training.lora.adapters import attached
from ..training.sampler import sample
from .folders import VIDEO_MODEL_FOLDERS, model_entry, roots
from .types import Component, LoadedVideoModel, VideoModelType

CATEGORY = "video reward/sampling"
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NEGATIVE = (
    "The video is not of a high quality, it has a low resolution. Watermark present in each frame. The background "
    "is solid. Strange body and strange trajectory. Distortion."
)


def _folders(family: str) -> list[str]:
    folders = roots(VIDEO_MODEL_FOLDERS[family])
    return [name for name in list_entries(folders) if any((root / name).is_dir() for root in folders)]


def load_video_model(family_cls, name: str, precision: str) -> LoadedVideoModel:
    """Load a family's folder from its ComfyUI model folder, on the offload device, behind ComfyUI model patchers."""
    import comfy.model_management as mm
    import comfy.model_patcher

    folder = model_entry(VIDEO_MODEL_FOLDERS[family_cls.name], name)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    dtype = PRECISIONS[precision] if precision != "auto" else (torch.float32 if mm.is_device_cpu(load_device) else torch.bfloat16)
    family = family_cls.load(folder, dtype=dtype, device=offload_device)
    family.device = load_device
    components = {"transformer": family.transformer, "vae": family.vae,
                  **{f"text_encoder:{key}": encoder for key, encoder in family.text_encoders.items()}}
    patchers = {
        role: comfy.model_patcher.ModelPatcher(Component(module), load_device=load_device, offload_device=offload_device)
        for role, module in components.items()
    }
    return LoadedVideoModel(family, patchers)


def _text_encoder_roles(model: LoadedVideoModel) -> list[str]:
    return [role for role in model.patchers if role.startswith("text_encoder")]


def _unload(patchers: list) -> None:
    """Unload exactly `patchers` through ComfyUI's model manager (`free_memory`, keeping every other loaded model),
    so its list of loaded models stays its own."""
    import comfy.model_management as mm

    others = [mm.LoadedModel(p) for p in mm.loaded_models() if all(p is not q for q in patchers)]
    for device in {p.load_device for p in patchers}:
        mm.free_memory(1e30, device, keep_loaded=others)


@contextmanager
def _placed(model: LoadedVideoModel, memory: str) -> Iterator[None]:
    """The transformer and VAE where the memory mode wants them while the block samples and decodes: loaded by
    ComfyUI's model manager, or (sequential offload) handed to accelerate, which streams their weights."""
    import comfy.model_management as mm

    roles = [role for role in model.patchers if role not in _text_encoder_roles(model)]
    if memory != "sequential offload":
        model.load(*roles)
        yield
        return
    # all of this model off the GPU first (the prompts are cached): ComfyUI's manager does not see what accelerate streams
    _unload(list(model.patchers.values()))
    family = model.family
    with apply_memory_mode(family, memory, family.device, names=[*family.transformers, "vae"],
                           offload_device=mm.unet_offload_device()):
        yield


def _loader_schema(node_id: str, family: str, example: str) -> io.Schema:
    folder = VIDEO_MODEL_FOLDERS[family]
    return io.Schema(
        node_id=node_id,
        display_name=f"Load {family}",
        category=CATEGORY,
        description=f"Loads a {family} InP model folder (as published, with its transformer, vae, text encoder, tokenizer "
        f"and scheduler subfolders) from models/{folder}.",
        inputs=[
            io.Combo.Input("model", options=_folders(family), tooltip=f"The model folder, e.g. {example}, in models/{folder}."),
            io.Combo.Input("precision", options=["auto", *PRECISIONS], default="auto",
                           tooltip="Weight precision. auto: bf16 on a GPU, fp32 on the CPU."),
        ],
        outputs=[VideoModelType.Output(display_name="model")],
    )


class CogVideoXFunLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _loader_schema("CogVideoXFunLoader", "CogVideoX-Fun", "CogVideoX-Fun-V1.1-5b-InP")

    @classmethod
    def execute(cls, model: str, precision: str) -> io.NodeOutput:
        from ..training.families.cogvideox import CogVideoXFun

        return io.NodeOutput(load_video_model(CogVideoXFun, model, precision))


class EasyAnimateLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _loader_schema("EasyAnimateLoader", "EasyAnimate", "EasyAnimateV5.1-12b-zh-InP or EasyAnimateV5-12b-zh-InP")

    @classmethod
    def execute(cls, model: str, precision: str) -> io.NodeOutput:
        from ..training.families.easyanimate import EasyAnimate

        return io.NodeOutput(load_video_model(EasyAnimate, model, precision))


class VideoModelSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoRewardSampler",
            display_name="Sample Video (CogVideoX-Fun / EasyAnimate)",
            category=CATEGORY,
            description="Text- or image-to-video with a pack-loaded model and its reward LoRAs; outputs the frames and frame rate.",
            inputs=[
                VideoModelType.Input("model", tooltip="From Load CogVideoX-Fun or Load EasyAnimate (optionally through Reward LoRA for Video Model)."),
                io.String.Input("prompt", multiline=True, default="", tooltip="What the video shows."),
                io.String.Input("negative_prompt", multiline=True, default=NEGATIVE, tooltip="What to steer away from (used when cfg > 1)."),
                io.Int.Input("width", default=672, min=16, max=2048, step=16, tooltip="Width in pixels (a multiple of 16)."),
                io.Int.Input("height", default=384, min=16, max=2048, step=16, tooltip="Height in pixels (a multiple of 16)."),
                io.Int.Input("frames", default=49, min=1, max=1025, step=4, tooltip="Number of frames, 4k+1 (both families were trained on 49)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=6.0, min=1.0, max=30.0, step=0.1, tooltip="Classifier-free guidance scale (1 = off)."),
                io.Int.Input("seed", default=43, min=0, max=MAX_SEED, control_after_generate=True, tooltip="Noise seed."),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="model offload",
                               tooltip="Where the weights live while sampling. full: everything on the GPU at once (fastest, "
                               "most memory). model offload: each part (text encoder, transformer, VAE) on the GPU only "
                               "while it runs. sequential offload: weights stay in RAM and stream to the GPU layer by layer "
                               "(slowest; lets a 12B model sample on a 24 GB card)."),
                io.Image.Input("start_image", optional=True, tooltip="Image-to-video: the first frame (resized to width x height)."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The video's frames."),
                io.Float.Output(display_name="fps", tooltip="The frame rate the model was trained for."),
            ],
        )

    @classmethod
    def execute(cls, model: LoadedVideoModel, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                steps: int, cfg: float, seed: int, memory: str, start_image: torch.Tensor | None = None) -> io.NodeOutput:
        import comfy.utils

        family = model.family
        family.check_size(frames, height, width)
        image = None
        if start_image is not None:
            image = start_image[:1].permute(0, 3, 1, 2)[:, :3]
            image = comfy.utils.common_upscale(image, width, height, "bicubic", "center").clamp(0, 1)
        check_memory_mode(memory)
        model.load(*(model.patchers if memory == "full" else _text_encoder_roles(model)))
        family.encode([prompt, negative_prompt])
        bar = comfy.utils.ProgressBar(steps)
        generator = torch.Generator().manual_seed(seed)
        loras = [(lora, strength) for lora, strength, _ in model.loras]
        with attached(family.transformer, family.lora_family, loras), _placed(model, memory):  # LoRAs join offloaded weights
            latents = sample(family, [prompt], negative_prompt, frames, height, width, steps, cfg, generator, image,
                             callback=lambda done, total: bar.update_absolute(done, total))
            video = family.decode(latents)[0]
        return io.NodeOutput(video.permute(0, 2, 3, 1).float().cpu(), family.fps)


NODES: list[type[io.ComfyNode]] = [CogVideoXFunLoader, EasyAnimateLoader, VideoModelSampler]
