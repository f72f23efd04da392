"""EasyAnimate zh-InP (7B / 12B), V5 and V5.1, from the published model folders, on diffusers' classes.

Folder: transformer/ (original weight names: the text stream under `attn2`, renamed here to diffusers' `attn1.add_*`
and loaded strictly), vae/ (AutoencoderKLMagvit), scheduler/, and the text encoder(s), which tell the versions apart:
- V5: text_encoder/ + tokenizer/ (Bert) and text_encoder_2/ + tokenizer_2/ (T5), both run without attention masks as
  upstream does; sampled with DDIM.
- V5.1: text_encoder/ + tokenizer/ (Qwen2-VL): the prompt in the tokenizer's chat template, padded to 256 tokens, and
  the hidden states that enter the last decoder layer; sampled with flow matching.
Latents are `[B, 16, F, H/8, W/8]`; the 17 inpaint channels go in `inpaint_latents`.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from ...reward.files import ModelFileError, read_weights
from ...reward.hf_load import load_strict
from ..lora.keymap import EASYANIMATE
from .base import TextEmbeddings, VideoFamily, check_start_image
from .inpaint import start_image_latents
from .loading import load_diffusers, load_tokenizer, read_config, scheduler_config, subfolder

LATENT_CHANNELS = 16
MAX_TEXT_LENGTH = 256
FLOW_MU = 1.0  # upstream sets the flow-matching timesteps with mu=1 when the scheduler shifts dynamically
# original -> diffusers names of the text-stream attention (they apply to every weight under them)
RENAMES = {
    ".attn2.to_q.": ".attn1.add_q_proj.", ".attn2.to_k.": ".attn1.add_k_proj.", ".attn2.to_v.": ".attn1.add_v_proj.",
    ".attn2.to_out.0.": ".attn1.to_add_out.", ".attn2.norm_q.": ".attn1.norm_added_q.", ".attn2.norm_k.": ".attn1.norm_added_k.",
}


def to_diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _transformer_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in read_weights(folder / shard).items()}
    path = folder / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise ModelFileError(f"{folder} has no diffusion_pytorch_model.safetensors")
    return read_weights(path)


def _text_length(tokenizer) -> int:
    return min(tokenizer.model_max_length, MAX_TEXT_LENGTH)


class EasyAnimate(VideoFamily):
    """EasyAnimate V5 (Bert + T5, DDIM); `load` returns EasyAnimateV51 for a V5.1 folder."""

    name = "EasyAnimate"
    lora_family = EASYANIMATE
    fps = 8.0
    text_encoder_type = "bert"  # model_type in text_encoder/config.json

    def __init__(self, transformer, vae, encoders: dict, tokenizers: dict, scheduler_config: dict, add_image_noise: bool,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(transformer, vae, dtype, device)
        self.text_encoders = encoders
        self.tokenizers = tokenizers
        self.scheduler_config = scheduler_config
        self.add_image_noise = add_image_noise

    @classmethod
    def load_transformer(cls, folder: Path, dtype: torch.dtype):
        """The transformer from original-named weights, strictly (diffusers' own loader would leave the text
        stream randomly initialised)."""
        from diffusers import EasyAnimateTransformer3DModel

        config = read_config(folder)
        if config.get("_class_name") != "EasyAnimateTransformer3DModel":
            raise ModelFileError(f"{folder} holds a {config.get('_class_name')} model, not EasyAnimate")
        if config.get("in_channels") != 2 * LATENT_CHANNELS + 1:
            raise ModelFileError(f"{folder.parent.name} has in_channels {config.get('in_channels')}; EasyAnimate InP models have 33")
        accepted = set(inspect.signature(EasyAnimateTransformer3DModel.__init__).parameters)
        with torch.device("meta"):
            model = EasyAnimateTransformer3DModel(**{k: v for k, v in config.items() if k in accepted})
        state = to_diffusers_state(_transformer_weights(folder))
        try:
            model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
        except RuntimeError as err:
            raise ModelFileError(f"EasyAnimate transformer: the weights in {folder} do not fit its config: {err}") from err
        return model.eval().requires_grad_(False), bool(config.get("add_noise_in_inpaint_model", False))

    @classmethod
    def load_text_encoders(cls, folder: Path, dtype: torch.dtype) -> tuple[dict, dict]:
        """The text encoders and tokenizers by key."""
        from transformers import BertModel, T5EncoderModel

        encoders = {
            "bert": load_strict(BertModel, subfolder(folder, "text_encoder", "the Bert text encoder", cls.name), dtype,
                                f"{cls.name} Bert text encoder", ignore_unexpected=("pooler.",)),
            "t5": load_strict(T5EncoderModel, subfolder(folder, "text_encoder_2", "the T5 text encoder", cls.name), dtype,
                              f"{cls.name} T5 text encoder"),
        }
        tokenizers = {key: load_tokenizer(subfolder(folder, name, f"the {key} tokenizer", cls.name), cls.name)
                      for key, name in (("bert", "tokenizer"), ("t5", "tokenizer_2"))}
        return encoders, tokenizers

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu") -> "EasyAnimate":
        """A V5 or V5.1 model, told apart by the text encoder the folder holds."""
        from diffusers import AutoencoderKLMagvit

        text_encoder_type = read_config(subfolder(folder, "text_encoder", "the text encoder", cls.name)).get("model_type")
        versions = {version.text_encoder_type: version for version in (EasyAnimate, EasyAnimateV51)}
        if text_encoder_type not in versions:
            raise ModelFileError(f"{folder.name}/text_encoder holds a {text_encoder_type} model; EasyAnimate V5 has Bert "
                                 "(and T5 in text_encoder_2), V5.1 has Qwen2-VL")
        version = versions[text_encoder_type]
        transformer, add_noise = cls.load_transformer(subfolder(folder, "transformer", "the transformer", cls.name), dtype)
        vae = load_diffusers(AutoencoderKLMagvit, subfolder(folder, "vae", "the Magvit VAE", cls.name), dtype, f"{cls.name} VAE")
        encoders, tokenizers = version.load_text_encoders(folder, dtype)
        config_of_scheduler = scheduler_config(subfolder(folder, "scheduler", "the scheduler", cls.name), cls.name)
        device = torch.device(device)
        for module in (transformer, vae, *encoders.values()):
            module.to(device)
        return version(transformer, vae, encoders, tokenizers, config_of_scheduler, add_noise, dtype, device)

    def new_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, LATENT_CHANNELS, (frames - 1) // self.temporal_scale + 1, height // self.spatial_scale, width // self.spatial_scale)

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        out = {}
        for key, field in (("bert", "embeds"), ("t5", "embeds_t5")):
            tokenizer, encoder = self.tokenizers[key], self.text_encoders[key]
            ids = tokenizer(prompts, padding="max_length", max_length=_text_length(tokenizer), truncation=True,
                            return_tensors="pt").input_ids
            out[field] = encoder(ids.to(self.device))[0]
        return TextEmbeddings(out)

    def conditioning(self, latents: torch.Tensor, start_image: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, _, frames, height, width = latents.shape
        if start_image is None:
            return latents.new_zeros(batch, LATENT_CHANNELS + 1, frames, height, width)
        check_start_image(start_image, height * self.spatial_scale, width * self.spatial_scale)
        return start_image_latents(self.vae, start_image, frames, self.temporal_scale, self.add_image_noise, generator,
                                   self.dtype, self.device)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings, condition: torch.Tensor) -> torch.Tensor:
        out = self._caller("transformer")(
            hidden_states=latents.to(self.dtype),
            timestep=t.expand(latents.shape[0]).to(self.device, self.dtype),
            encoder_hidden_states=text.tensors["embeds"],
            encoder_hidden_states_t5=text.tensors.get("embeds_t5"),
            inpaint_latents=condition.to(self.dtype),
            return_dict=False,
        )[0]
        return out.float()

    def decode(self, latents: torch.Tensor, first_n: int | None = None) -> torch.Tensor:
        latents = latents[:, :, :first_n] if first_n else latents
        pixels = self.vae.decode(latents.to(self.dtype) / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        return (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)


class EasyAnimateV51(EasyAnimate):
    """EasyAnimate V5.1: one Qwen2-VL text encoder, flow-matching sampling."""

    text_encoder_type = "qwen2_vl"

    @classmethod
    def load_text_encoders(cls, folder: Path, dtype: torch.dtype) -> tuple[dict, dict]:
        from transformers import Qwen2VLModel

        # the language model and vision tower; the LM head is not needed for embeddings
        encoder = load_strict(Qwen2VLModel, subfolder(folder, "text_encoder", "the Qwen2-VL text encoder", cls.name), dtype,
                              f"{cls.name} Qwen2-VL text encoder", ignore_unexpected=("lm_head.",))
        tokenizer = load_tokenizer(subfolder(folder, "tokenizer", "the Qwen2 tokenizer", cls.name), cls.name)
        if not tokenizer.chat_template:
            raise ModelFileError(f"{cls.name}: the tokenizer in {folder.name}/tokenizer has no chat template (V5.1 prompts "
                                 "are encoded in Qwen2-VL's chat format)")
        return {"qwen": encoder}, {"qwen": tokenizer}

    def new_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)

    def schedule(self, steps: int, device: torch.device | None = None):
        scheduler = self.new_scheduler()
        shift = {"mu": FLOW_MU} if scheduler.config.use_dynamic_shifting else {}
        scheduler.set_timesteps(steps, device=device, **shift)
        return scheduler

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        tokenizer, encoder = self.tokenizers["qwen"], self.text_encoders["qwen"]
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                                               tokenize=False, add_generation_prompt=True) for prompt in prompts]
        inputs = tokenizer(text=chats, padding="max_length", max_length=_text_length(tokenizer), truncation=True,
                           padding_side="right", return_tensors="pt")
        mask = inputs.attention_mask.to(self.device)
        # text-only rotary positions as upstream's transformers (4.46-4.48) computed them: pads at position 1
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        hidden = encoder(input_ids=inputs.input_ids.to(self.device), attention_mask=mask,
                         position_ids=positions.expand(3, -1, -1), output_hidden_states=True).hidden_states
        return TextEmbeddings({"embeds": hidden[-2]})
