"""The one denoising loop, for inference and training, over any model family.

Classifier-free guidance doubles the batch (negative first). Steps listed in `grad_steps` run with autograd,
every other step under `torch.no_grad()`, so gradients reach the model (e.g. a LoRA) only through the chosen
steps. Inference passes no grad steps.
"""
from __future__ import annotations

from typing import Callable, Collection

import torch

from .families.base import VideoFamily


def sample(
    family: VideoFamily,
    prompts: list[str],
    negative_prompt: str = "",
    frames: int = 49,
    height: int = 480,
    width: int = 720,
    steps: int = 50,
    guidance: float = 6.0,
    generator: torch.Generator | None = None,
    start_image: torch.Tensor | None = None,
    grad_steps: Collection[int] = (),
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Latents of `len(prompts)` videos; `start_image` `[B,3,H,W]` in 0..1 makes it image-to-video.

    `callback(step, steps)` runs after every step (progress, cancellation)."""
    family.check_size(frames, height, width)
    scheduler = family.new_scheduler()
    scheduler.set_timesteps(steps, device=family.device)
    guided = guidance > 1.0
    text = family.encode(prompts)
    if guided:
        text = family.encode([negative_prompt] * len(prompts)).cat(text)
    latents = family.init_latents(len(prompts), frames, height, width, generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        condition = family.conditioning(latents, start_image, generator)
    for index, t in enumerate(scheduler.timesteps):
        with torch.enable_grad() if index in grad_steps else torch.no_grad():
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = family.predict(model_input, t, text, torch.cat([condition] * 2) if guided else condition)
            if guided:
                negative, positive = prediction.chunk(2)
                prediction = negative + guidance * (positive - negative)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(index + 1, len(scheduler.timesteps))
    return latents
