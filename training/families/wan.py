"""Wan2.2 A14B (a high-noise and a low-noise expert) from the single files ComfyUI users keep, on diffusers' and
transformers' classes.

Files: models/diffusion_models/ the two experts (original Wan key names; fp16/bf16, or ComfyUI "fp8 scaled"),
models/vae/wan_2.1_vae.safetensors (original Wan VAE keys), models/text_encoders/umt5_xxl_*.safetensors (ComfyUI's
UMT5: transformers key names, possibly fp8 scaled, with its SentencePiece model embedded as the uint8 tensor
`spiece_model`). Model sizes are read from the weight shapes. Latents are `[B, 16, F, H/8, W/8]`, normalised by the
VAE's per-channel mean and std. I2V and Fun InP experts (36 input channels) take `[keep-mask (4), masked-video
latents (16)]` after the noisy latents on dim 1. The high-noise expert runs for timesteps >= boundary * 1000, on the
flow-matching schedule shifted by `shift` (sigma' = shift * sigma / (1 + (shift - 1) * sigma)).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ...reward.files import ModelFileError
from ...reward.hf_load import load_strict
from ..lora.keymap import WAN
from ..scaled_fp8 import read_dequantised, read_shapes
from .base import TextEmbeddings, VideoFamily, check_start_image

LATENT_CHANNELS = 16
MASK_CHANNELS = 4  # one per pixel frame of a latent frame's group of 4
TEXT_LENGTH = 512
HEAD_DIM = 128  # every Wan model; ComfyUI derives the head count the same way
NUM_TRAIN_TIMESTEPS = 1000
BOUNDARIES = {LATENT_CHANNELS: 0.875, 2 * LATENT_CHANNELS + MASK_CHANNELS: 0.900}  # by input channels: T2V, I2V/Fun InP
# The official sampling shift by input channels: T2V A14B 12.0 (Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py
# `sample_shift`; VideoX-Fun config/wan2.2/wan_civitai_t2v.yaml `scheduler_kwargs.shift`), I2V A14B and Fun A14B InP
# 5.0 (wan/configs/wan_i2v_A14B.py; VideoX-Fun config/wan2.2/wan_civitai_i2v.yaml, which its Wan2.2-Fun reward
# training scripts/wan2.2_fun/train_reward_lora.sh uses). ComfyUI's Wan2.2 14B templates sample at 8 (ModelSamplingSD3).
SHIFTS = {LATENT_CHANNELS: 12.0, 2 * LATENT_CHANNELS + MASK_CHANNELS: 5.0}
# a key that marks what a file holds, for the errors about files given in the wrong place
KINDS = {
    "head.modulation": "a Wan diffusion model",
    "decoder.middle.0.residual.0.gamma": "a Wan VAE",
    "encoder.block.0.layer.0.SelfAttention.q.weight": "a T5-family text encoder",
    "condition_embedder.time_proj.weight": "a Wan transformer in diffusers' naming",
    "transformer_blocks.0.attn1.to_q.weight": "a CogVideoX or EasyAnimate transformer",
}


def _kind(shapes: Mapping[str, Any]) -> str:
    return next((kind for key, kind in KINDS.items() if key in shapes), "an unrecognised model")


def _count(shapes: Mapping[str, Any], prefix: str) -> int:
    """How many numbered blocks `prefix<N>.` the weights hold."""
    return len({key[len(prefix):].split(".")[0] for key in shapes if key.startswith(prefix)})


def transformer_config(shapes: Mapping[str, Sequence[int]], path: Path) -> dict[str, Any]:
    """The WanTransformer3DModel configuration of an original-key Wan2.2 A14B expert, from its weight shapes."""
    if "head.modulation" not in shapes or "blocks.0.self_attn.q.weight" not in shapes:
        raise ModelFileError(f"{path.name} is {_kind(shapes)}, not a Wan diffusion model (expected the original Wan key "
                             "names, e.g. blocks.0.self_attn.q.weight, as in ComfyUI's diffusion_models files)")
    if any(key.startswith("img_emb.") for key in shapes):
        raise ModelFileError(f"{path.name} has a CLIP image embedding (a Wan2.1 I2V model); load the Wan2.2 A14B experts")
    try:
        dim, in_channels, *patch_size = shapes["patch_embedding.weight"]
        config = dict(
            patch_size=tuple(patch_size), num_attention_heads=dim // HEAD_DIM, attention_head_dim=HEAD_DIM,
            in_channels=in_channels, out_channels=shapes["head.head.weight"][0] // math.prod(patch_size),
            text_dim=shapes["text_embedding.0.weight"][1], freq_dim=shapes["time_embedding.0.weight"][1],
            ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=_count(shapes, "blocks."),
            cross_attn_norm="blocks.0.norm3.weight" in shapes,
            qk_norm="rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        )
    except (KeyError, ValueError) as err:
        raise ModelFileError(f"{path.name} is not a complete Wan diffusion model (at {err})") from err
    if config["out_channels"] != LATENT_CHANNELS:
        raise ModelFileError(
            f"{path.name} predicts {config['out_channels']} latent channels (a Wan2.2 TI2V-5B model, for the Wan2.2 VAE?); "
            f"the pack runs the Wan2.2 A14B experts, which predict {LATENT_CHANNELS} (the Wan2.1 VAE)"
        )
    if in_channels not in BOUNDARIES:
        raise ModelFileError(f"{path.name} takes {in_channels} input channels; Wan2.2 A14B experts take 16 (T2V) or 36 (I2V, Fun InP)")
    if dim % HEAD_DIM:
        raise ModelFileError(f"{path.name} has width {dim}, not a multiple of the Wan head size {HEAD_DIM}")
    return config


def vae_config(shapes: Mapping[str, Sequence[int]], path: Path) -> dict[str, Any]:
    """The AutoencoderKLWan configuration of an original-key Wan2.1 VAE, from its weight shapes."""
    if not {"decoder.middle.0.residual.0.gamma", "encoder.conv1.weight", "conv2.weight"} <= shapes.keys():
        raise ModelFileError(f"{path.name} is {_kind(shapes)}, not the Wan2.1 VAE (ComfyUI's wan_2.1_vae.safetensors)")
    channels = shapes["conv2.weight"][0]
    if channels != LATENT_CHANNELS:
        raise ModelFileError(f"{path.name} is a VAE with {channels} latent channels (the Wan2.2 VAE of the TI2V-5B model?); "
                             f"the A14B experts use the Wan2.1 VAE with {LATENT_CHANNELS} (wan_2.1_vae.safetensors)")
    return dict(base_dim=shapes["encoder.conv1.weight"][0], z_dim=channels)


def text_encoder_config(shapes: Mapping[str, Sequence[int]], path: Path) -> Any:
    """The UMT5Config of ComfyUI's UMT5 file, from its weight shapes; the file must embed its tokenizer."""
    from transformers import UMT5Config

    block = "encoder.block.{}.layer.{}."
    if "shared.weight" not in shapes or block.format(0, 1) + "DenseReluDense.wi_0.weight" not in shapes:
        raise ModelFileError(f"{path.name} is {_kind(shapes)}, not ComfyUI's UMT5 text encoder (umt5_xxl_fp16.safetensors "
                             "or umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
    layers = _count(shapes, "encoder.block.")
    if any(block.format(n, 0) + "SelfAttention.relative_attention_bias.weight" not in shapes for n in range(layers)):
        raise ModelFileError(f"{path.name} is a T5 encoder with one position bias (e.g. Flux's or SD3's t5xxl), not UMT5, "
                             "which has one per layer")
    if "spiece_model" not in shapes:
        raise ModelFileError(f"{path.name} has no embedded tokenizer (the `spiece_model` tensor of ComfyUI's umt5_xxl "
                             "files); use one of those files")
    buckets, heads = shapes[block.format(0, 0) + "SelfAttention.relative_attention_bias.weight"]
    vocab, width = shapes["shared.weight"]
    return UMT5Config(
        vocab_size=vocab, d_model=width, d_kv=shapes[block.format(0, 0) + "SelfAttention.q.weight"][0] // heads,
        d_ff=shapes[block.format(0, 1) + "DenseReluDense.wi_0.weight"][0], num_layers=layers, num_heads=heads,
        relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1,
    )


def _build(cls: Any, config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype, what: str) -> Any:
    """`cls(**config)` holding exactly the weights of `state` (diffusers names; emptied while loading), cast to
    `dtype` except in the modules the class keeps in float32."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls(**config)
    expected = model.state_dict()
    problems = [f"{label} {sorted(keys)[:4]}" for label, keys in (
        ("missing", expected.keys() - state.keys()),
        ("unexpected", state.keys() - expected.keys()),
        ("wrong shapes", {k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape}),
    ) if keys]
    if problems:
        sizes = ", ".join(f"{k}={v}" for k, v in config.items())
        raise ModelFileError(f"{what}: the weights do not fit {cls.__name__}({sizes}): {'; '.join(problems)}")
    keep = set(cls._keep_in_fp32_modules or ())
    loaded = {}
    for key in list(state):
        loaded[key] = state.pop(key).to(torch.float32 if keep.intersection(key.split(".")) else dtype)
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def sentencepiece_tokenizer(model: torch.Tensor, path: Path) -> Any:
    """A SentencePiece processor from the serialised model in `model` (uint8), as ComfyUI reads it."""
    try:
        import sentencepiece
    except ImportError as err:
        raise ModelFileError(f"reading the tokenizer embedded in {path.name} needs the sentencepiece package "
                             "(ComfyUI installs it; pip install sentencepiece)") from err
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=model.numpy().tobytes())
    except RuntimeError as err:
        raise ModelFileError(f"{path.name}: the embedded tokenizer (spiece_model) is not a SentencePiece model: {err}") from err


class Wan22(VideoFamily):
    name = "Wan2.2"
    lora_family = WAN
    fps = 16.0

    def __init__(self, high: nn.Module, low: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                 boundary: float, shift: float, offload_idle: bool, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(low, vae, dtype, device)
        self.high = high
        self.text_encoders = {"umt5": text_encoder}
        self.tokenizer = tokenizer
        self.boundary = boundary
        self.shift = shift
        self.offload_idle = offload_idle

    @classmethod
    def load(cls, high: Path, low: Path, vae: Path, text_encoder: Path, dtype: torch.dtype = torch.bfloat16,
             device: torch.device | str = "cpu", boundary: float | None = None, shift: float | None = None,
             offload_idle: bool = False) -> "Wan22":
        """The experts, VAE and UMT5 from ComfyUI's files. `boundary` and `shift` default to the official values of the
        experts loaded (BOUNDARIES, SHIFTS: 0.900 and 5 for I2V / Fun InP experts, 0.875 and 12 for T2V ones);
        `offload_idle` keeps the expert that is not running (and has nothing to train) on the CPU."""
        if boundary is not None and not 0 < boundary <= 1:
            raise ValueError(f"the expert boundary is a fraction of the 1000 timesteps (0 < boundary <= 1), got {boundary}")
        if shift is not None and shift <= 0:
            raise ValueError(f"the timestep shift must be positive, got {shift}")
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
        from transformers import UMT5EncoderModel

        paths = {"high": Path(high), "low": Path(low), "vae": Path(vae), "text_encoder": Path(text_encoder)}
        what = {"high": "Wan2.2 high-noise expert", "low": "Wan2.2 low-noise expert", "vae": "Wan VAE", "text_encoder": "Wan text encoder"}
        shapes = {role: read_shapes(path, what[role]) for role, path in paths.items()}  # every file checked before any is read
        configs = {expert: transformer_config(shapes[expert], paths[expert]) for expert in ("high", "low")}
        differences = [f"{key} {configs['high'][key]} (high) vs {configs['low'][key]} (low)"
                       for key in configs["high"] if configs["high"][key] != configs["low"][key]]
        if differences:
            raise ModelFileError(f"the experts {paths['high'].name} and {paths['low'].name} are different models: {', '.join(differences)}")
        autoencoder_config = vae_config(shapes["vae"], paths["vae"])
        encoder_config = text_encoder_config(shapes["text_encoder"], paths["text_encoder"])
        if configs["low"]["text_dim"] != encoder_config.d_model:
            raise ModelFileError(f"{paths['text_encoder'].name} gives {encoder_config.d_model}-wide embeddings; the experts take "
                                 f"{configs['low']['text_dim']} (is it the UMT5 encoder Wan uses?)")

        def read(role: str) -> dict[str, torch.Tensor]:
            return read_dequantised(paths[role], dtype, what[role])

        label = {role: f"{what[role]} {path.name}" for role, path in paths.items()}
        autoencoder = _build(AutoencoderKLWan, autoencoder_config, convert_wan_vae_to_diffusers(read("vae")), dtype, label["vae"])
        state = read("text_encoder")
        tokenizer = sentencepiece_tokenizer(state.pop("spiece_model"), paths["text_encoder"])
        encoder = load_strict(UMT5EncoderModel, None, dtype, label["text_encoder"], config=encoder_config, state_dict=state)
        encoder.requires_grad_(False)
        del state
        high_expert, low_expert = (
            _build(WanTransformer3DModel, configs[expert], convert_wan_transformer_to_diffusers(read(expert)), dtype, label[expert])
            for expert in ("high", "low")
        )
        device = torch.device(device)
        for module in (autoencoder, encoder) if offload_idle else (autoencoder, encoder, high_expert, low_expert):
            module.to(device)
        in_channels = configs["low"]["in_channels"]
        return cls(high_expert, low_expert, autoencoder, encoder, tokenizer,
                   BOUNDARIES[in_channels] if boundary is None else boundary, SHIFTS[in_channels] if shift is None else shift,
                   offload_idle, dtype, device)

    @property
    def transformers(self) -> dict[str, nn.Module]:
        return {"high": self.high, "low": self.transformer}

    def expert(self, t: torch.Tensor | float) -> str:
        """The expert that denoises at timestep `t`: "high" from boundary * 1000 up, "low" below."""
        return "high" if float(t) >= self.boundary * NUM_TRAIN_TIMESTEPS else "low"

    def sampling_settings(self) -> dict[str, float]:
        return {"shift": self.shift, "boundary": self.boundary}

    def new_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=self.shift, use_dynamic_shifting=False)

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, LATENT_CHANNELS, (frames - 1) // self.temporal_scale + 1, height // self.spatial_scale, width // self.spatial_scale)

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        """UMT5 over 512 tokens with the attention mask; positions past each prompt's end are zero."""
        encoder = self.text_encoders["umt5"]
        rows = [self.tokenizer.encode(prompt)[: TEXT_LENGTH - 1] + [self.tokenizer.eos_id()] for prompt in prompts]
        ids = torch.zeros(len(rows), TEXT_LENGTH, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row)
            mask[index, : len(row)] = 1
        ids, mask = ids.to(encoder.device), mask.to(encoder.device)
        embeds = encoder(input_ids=ids, attention_mask=mask)[0]
        return TextEmbeddings({"embeds": embeds.masked_fill(mask[..., None] == 0, 0)})

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        shape = (1, LATENT_CHANNELS, 1, 1, 1)
        return (torch.tensor(config.latents_mean, device=like.device).view(shape),
                torch.tensor(config.latents_std, device=like.device).view(shape))

    def conditioning(self, latents: torch.Tensor, start_image: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """36-channel experts: `[keep-mask (4), masked-video latents (16)]`, all zero for text-to-video. With a start
        image, pixel frame 0 is kept: mask 1 in all 4 channels of latent frame 0 (channel k stands for pixel frame k of
        the latent frame's group of 4; frame 0 fills its group alone), and the video is the image followed by zeros
        (mid-grey), encoded (mode) and normalised. 16-channel experts take no conditioning channels."""
        batch, _, frames, height, width = latents.shape
        channels = self.transformer.config.in_channels - LATENT_CHANNELS
        if channels == 0 and start_image is not None:
            raise ValueError(f"{self.name}: these are text-to-video experts (16 input channels); image-to-video needs the "
                             "I2V or Fun InP experts")
        if start_image is None:
            return latents.new_zeros(batch, channels, frames, height, width)
        check_start_image(start_image, height * self.spatial_scale, width * self.spatial_scale)
        vae_device = next(self.vae.parameters()).device
        video = torch.zeros(batch, 3, (frames - 1) * self.temporal_scale + 1, *start_image.shape[-2:], device=vae_device)
        video[:, :, 0] = start_image.to(vae_device, torch.float32) * 2 - 1
        encoded = self.vae.encode(video.to(self.dtype)).latent_dist.mode().float()
        mean, std = self._latent_statistics(encoded)
        mask = torch.zeros(batch, MASK_CHANNELS, frames, height, width, device=vae_device)
        mask[:, :, 0] = 1.0
        return torch.cat([mask, (encoded - mean) / std], dim=1).to(self.device, self.dtype)

    def _from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_statistics(latents)
        return (latents - mean) / std

    def _running(self, name: str) -> Callable[..., Any]:
        """The expert `name`, on the device; with `offload_idle` the other one goes to the CPU unless it is training.
        A routed expert (a DeepSpeed engine's, a block-swapped one) is placed by its wrapper."""
        experts = self.transformers
        if self.offload_idle:
            for other_name, other in experts.items():
                if other_name not in (name, *self._callers) and not any(p.requires_grad for p in other.parameters()):
                    other.to("cpu")
            if name not in self._callers:
                experts[name].to(self.device)
        return self._caller(name)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings, condition: torch.Tensor) -> torch.Tensor:
        model = self._running(self.expert(t))
        out = model(
            hidden_states=torch.cat([latents.to(self.dtype), condition.to(self.dtype)], dim=1),
            timestep=t.expand(latents.shape[0]).to(self.device),
            encoder_hidden_states=text.tensors["embeds"],
            return_dict=False,
        )[0]
        return out.float()

    def decode(self, latents: torch.Tensor, first_n: int | None = None) -> torch.Tensor:
        latents = latents[:, :, :first_n] if first_n else latents
        mean, std = self._latent_statistics(latents)
        pixels = self.vae.decode((latents.float() * std + mean).to(self.dtype)).sample.clamp(-1, 1)
        return (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
