"""Tiny EasyAnimate models trained briefly as denoisers of toy videos (each one flat colour), for DPO's held-out
reward check. For ε-prediction winner and loser share the target (the noise), so DPO's first push on the predicted
noise is minus the reference's prediction difference between them: samples move toward the winners only where the
reference responds to its input as a denoiser does (`preference_checks.reference_alignment` > 0). At random
initialisation it responds the other way and DPO moves samples toward the losers; a real model has been trained."""
from __future__ import annotations

from pathlib import Path

import torch

from video_reward_lora.training.families.easyanimate import EasyAnimate
from video_reward_lora.training.families.tiny import write_easyanimate_weights
from video_reward_lora.training.methods.dpo import noised, training_schedule

TOY_VIDEOS = 256
BATCH = 8


def flat_colour_videos(count: int, frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """`count` videos `[count, frames, 3, height, width]` in 0..1, each one uniformly drawn colour throughout."""
    colours = torch.rand(count, 1, 3, 1, 1, generator=generator)
    return colours.expand(count, frames, 3, height, width)


def train_as_denoiser(folder: Path, prompts: list[str], steps: int = 1000, learning_rate: float = 3e-3, seed: int = 0,
                      frames: int = 9, height: int = 32, width: int = 32) -> list[float]:
    """Trains the transformer of the EasyAnimate folder (V5 or V5.1) on its scheduler's own objective over the
    latents of flat-colour videos, captioned with random `prompts` (the colour does not depend on them), one drawn
    timestep per batch of `BATCH`; writes its weights back in the published layout. Returns the loss of every step."""
    family = EasyAnimate.load(folder, torch.float32)
    generator = torch.Generator().manual_seed(seed)
    data = family.encode_frames(flat_colour_videos(TOY_VIDEOS, frames, height, width, generator))
    prediction_type, timesteps, levels = training_schedule(family)
    transformer = family.transformer.requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=learning_rate)
    losses = []
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (BATCH,), generator=generator)]
        k = int(torch.randint(len(timesteps), (1,), generator=generator))
        x_t, target = noised(x0, torch.randn(x0.shape, generator=generator), levels[k], prediction_type)
        text = family.encode([prompts[int(i)] for i in torch.randint(len(prompts), (BATCH,), generator=generator)])
        loss = (family.predict(x_t, timesteps[k], text, family.conditioning(x_t, None)) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    write_easyanimate_weights(folder, transformer)
    return losses
