"""CogVideoX-Fun V1.1 InP (2B and 5B) from its published model folder, on diffusers' classes.

Folder: transformer/ (CogVideoXTransformer3DModel, in_channels 33), vae/ (AutoencoderKLCogVideoX), text_encoder/
(T5EncoderModel), tokenizer/ (T5), scheduler/ (DDIM configuration; sampled with plain DDIM as VideoX-Fun does).
Latents are `[B, F, 16, H/8, W/8]`; the 17 inpaint channels (a keep-mask scaled by the VAE factor, and the VAE
latents of the video with generated pixels set to -1) are concatenated on dim 2.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...reward.files import ModelFileError
from ...reward.hf_load import load_strict
from ..lora.keymap import COGVIDEOX
from .base import TextEmbeddings, VideoFamily, check_start_image
from .inpaint import start_image_latents
from .loading import load_diffusers, load_tokenizer, read_config, scheduler_config, subfolder

TEXT_LENGTH = 226
LATENT_CHANNELS = 16


class CogVideoXFun(VideoFamily):
    name = "CogVideoX-Fun"
    lora_family = COGVIDEOX
    fps = 8.0

    def __init__(self, transformer, vae, text_encoder, tokenizer, scheduler_config: dict, add_image_noise: bool,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(transformer, vae, dtype, device)
        self.text_encoders = {"t5": text_encoder}
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config
        self.add_image_noise = add_image_noise
        self._rope: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu") -> "CogVideoXFun":
        from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
        from transformers import T5EncoderModel

        transformer_dir = subfolder(folder, "transformer", "the CogVideoX-Fun transformer", cls.name)
        config = read_config(transformer_dir)
        if config.get("_class_name") != "CogVideoXTransformer3DModel":
            raise ModelFileError(f"{folder.name}/transformer holds a {config.get('_class_name')} model, not CogVideoX-Fun")
        if config.get("in_channels") != 2 * LATENT_CHANNELS + 1:
            raise ModelFileError(
                f"{folder.name} has in_channels {config.get('in_channels')}; CogVideoX-Fun InP models have 33 (the pack "
                "samples the InP models, for which the reward LoRAs were trained)"
            )
        device = torch.device(device)
        transformer = load_diffusers(CogVideoXTransformer3DModel, transformer_dir, dtype, f"{cls.name} transformer")
        vae = load_diffusers(AutoencoderKLCogVideoX, subfolder(folder, "vae", "the VAE", cls.name), dtype, f"{cls.name} VAE")
        text_encoder = load_strict(T5EncoderModel, subfolder(folder, "text_encoder", "the T5 text encoder", cls.name),
                                   dtype, f"{cls.name} text encoder")
        tokenizer = load_tokenizer(subfolder(folder, "tokenizer", "the T5 tokenizer", cls.name), cls.name)
        config_of_scheduler = scheduler_config(subfolder(folder, "scheduler", "the scheduler configuration", cls.name), cls.name)
        family = cls(transformer, vae, text_encoder, tokenizer, config_of_scheduler,
                     bool(config.get("add_noise_in_inpaint_model", False)), dtype, device)
        for module in (transformer, vae, text_encoder):
            module.to(device)
        return family

    def new_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, (frames - 1) // self.temporal_scale + 1, LATENT_CHANNELS, height // self.spatial_scale, width // self.spatial_scale)

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        encoder = self.text_encoders["t5"]
        ids = self.tokenizer(prompts, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        return TextEmbeddings({"embeds": encoder(ids.to(self.device))[0]})

    def conditioning(self, latents: torch.Tensor, start_image: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, frames, _, height, width = latents.shape
        if start_image is None:
            return latents.new_zeros(batch, frames, LATENT_CHANNELS + 1, height, width)
        check_start_image(start_image, height * self.spatial_scale, width * self.spatial_scale)
        condition = start_image_latents(self.vae, start_image, frames, self.temporal_scale, self.add_image_noise, generator,
                                        self.dtype, self.device)
        return condition.permute(0, 2, 1, 3, 4)

    def _rotary(self, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        key = (frames, height, width)
        if key not in self._rope:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed
            from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

            config = self.transformer.config
            grid = (height // config.patch_size, width // config.patch_size)
            crops = get_resize_crop_region_for_grid(grid, config.sample_width // config.patch_size, config.sample_height // config.patch_size)
            self._rope[key] = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                                      grid_size=grid, temporal_size=frames, device=self.device)
        return self._rope[key]

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings, condition: torch.Tensor) -> torch.Tensor:
        batch, frames, _, height, width = latents.shape
        hidden = torch.cat([latents.to(self.dtype), condition.to(self.dtype)], dim=2)
        out = self._caller("transformer")(
            hidden_states=hidden,
            encoder_hidden_states=text.tensors["embeds"],
            timestep=t.expand(batch).to(self.device),
            image_rotary_emb=self._rotary(frames, height, width),
            return_dict=False,
        )[0]
        return out.float()

    def _from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        return super()._from_vae(latents).permute(0, 2, 1, 3, 4)

    def decode(self, latents: torch.Tensor, first_n: int | None = None) -> torch.Tensor:
        latents = latents[:, :first_n] if first_n else latents
        pixels = self.vae.decode(latents.permute(0, 2, 1, 3, 4).to(self.dtype) / self.vae.config.scaling_factor).sample
        return (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
