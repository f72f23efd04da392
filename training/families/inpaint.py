"""The inpaint conditioning shared by CogVideoX-Fun and EasyAnimate InP models (VideoX-Fun's convention).

Channels `[keep-mask (1), masked-video latents (16)]` on a `[B, C, T, h, w]` layout: the mask is 1 where pixels are
kept, resized to the latent grid with the first frame on its own (causal VAE), times the VAE scaling factor; the
masked video has generated pixels at -1 and is encoded by the VAE (mode), times the scaling factor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_NOISE = 0.0563  # noise VideoX-Fun adds to the kept start image when the transformer config asks for it


def start_image_latents(
    vae: torch.nn.Module,
    start_image: torch.Tensor,
    latent_frames: int,
    temporal_scale: int,
    add_noise: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """`[B, 17, T, h, w]` conditioning on `device` that keeps `start_image` (`[B,3,H,W]` in 0..1) as the first frame."""
    image = start_image.to(device, torch.float32) * 2 - 1
    batch, _, height, width = image.shape
    if add_noise:
        noise = torch.randn(image.shape, generator=generator, device=generator.device if generator else "cpu")
        image = image + noise.to(device) * IMAGE_NOISE
    pixel_frames = (latent_frames - 1) * temporal_scale + 1
    video = torch.full((batch, 3, pixel_frames, height, width), -1.0, device=device)
    video[:, :, 0] = image
    scale = vae.config.scaling_factor
    encoded = vae.encode(video.to(dtype)).latent_dist.mode() * scale
    keep = torch.zeros(batch, 1, pixel_frames, height, width, device=device)
    keep[:, :, 0] = 1.0
    grid = encoded.shape[-2:]
    first = F.interpolate(keep[:, :, :1], size=(1, *grid), mode="trilinear", align_corners=False)
    rest = F.interpolate(keep[:, :, 1:], size=(latent_frames - 1, *grid), mode="trilinear", align_corners=False)
    return torch.cat([(torch.cat([first, rest], dim=2) * scale).to(dtype), encoded], dim=1)
