"""The one denoising loop, for inference and training, over any model family.

Classifier-free guidance doubles the batch (negative first). The model runs with autograd only on the steps listed
in `grad_steps`; every other prediction is made under `torch.no_grad()`, so gradients reach the model (e.g. a LoRA)
only through the chosen steps. The scheduler updates stay differentiable, so a loss on the final latents still
reaches a chosen step that is not the last one (through the scheduler's linear coefficients). Inference passes no
grad steps and keeps no graph at all.
"""
from __future__ import annotations

from typing import Any, Callable, Collection

import torch

from .families.base import TextEmbeddings, VideoFamily


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
    stop_input_gradient: bool = False,
    callback: Callable[[int, int], None] | None = None,
    on_grad_prediction: Callable[[torch.Tensor, torch.Tensor, TextEmbeddings, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Latents of `len(prompts)` videos; `start_image` `[B,3,H,W]` in 0..1 makes it image-to-video.

    `stop_input_gradient` (DRTune) detaches the transformer's input on the grad steps, so a step's gradient flows
    through its own prediction only. `callback(step, steps)` runs after every step (progress, cancellation);
    `on_grad_prediction(input, t, text, condition, prediction)` after the transformer's call on every grad step (the
    drift guard compares it with the LoRA-off prediction)."""
    family.check_size(frames, height, width)
    scheduler = family.schedule(steps, family.device)
    guided = guidance > 1.0
    text = family.encode(prompts)
    if guided:
        text = family.encode([negative_prompt] * len(prompts)).cat(text)
    latents = family.init_latents(len(prompts), frames, height, width, generator) * getattr(scheduler, "init_noise_sigma", 1.0)
    with torch.no_grad():
        condition = family.conditioning(latents, start_image, generator)
    if guided:
        condition = torch.cat([condition] * 2)
    for index, t in enumerate(scheduler.timesteps):
        with torch.enable_grad() if index in grad_steps else torch.no_grad():
            model_input = latents.detach() if stop_input_gradient else latents
            model_input = torch.cat([model_input] * 2) if guided else model_input
            if hasattr(scheduler, "scale_model_input"):
                model_input = scheduler.scale_model_input(model_input, t)
            prediction = family.predict(model_input, t, text, condition)
            if on_grad_prediction is not None and index in grad_steps:
                on_grad_prediction(model_input, t, text, condition, prediction)
            if guided:
                negative, positive = prediction.chunk(2)
                prediction = negative + guidance * (positive - negative)
        latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(index + 1, len(scheduler.timesteps))
    return latents


def sample_as(family: VideoFamily, prompts: list[str], settings: Any, generator: torch.Generator | None,
              **options: Any) -> torch.Tensor:
    """`sample` with the sampling settings of a config (its negative_prompt, frames, height, width, steps, guidance)."""
    s = settings
    return sample(family, prompts, s.negative_prompt, s.frames, s.height, s.width, s.steps, s.guidance, generator, **options)
