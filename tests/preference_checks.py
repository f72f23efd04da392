"""Held-out samples of a DPO trainer's model, and whether its pairs carry a preference that holds beyond their own
prompts: the reward change of samples whose latents move along the pairs' mean winner − loser latent difference (no
training involved)."""
from __future__ import annotations

import torch

from video_reward_lora.reward.seeds import seeded_generator
from video_reward_lora.training.methods.dpo import DiffusionDPO
from video_reward_lora.training.scored import ScoredSample, scored_sample

SHIFT = 0.3  # of the sample's own latent standard deviation
HELD_OUT_NOISE = 1  # the first key of a held-out sample's noise seed


def held_out_samples(trainer: DiffusionDPO, prompts: list[str], seeds: int) -> list[tuple[str, ScoredSample]]:
    """Every prompt sampled and scored at noise seeds 0..`seeds`−1 (prompt-major), with the trainer's LoRA as it is."""
    return [(prompt, scored_sample(trainer.family, trainer.reward, prompt, trainer.config,
                                   seeded_generator(seed, HELD_OUT_NOISE, index)))
            for index, prompt in enumerate(prompts) for seed in range(seeds)]


@torch.no_grad()
def shifted_gains(trainer: DiffusionDPO, samples: list[tuple[str, ScoredSample]]) -> torch.Tensor:
    """The reward gain of each (prompt, sample) when its latents move by `SHIFT` of their standard deviation along
    the mean winner − loser latent difference of the trainer's training pairs (scaled to unit RMS)."""
    direction = torch.stack([trainer.latents[pair.winner] - trainer.latents[pair.loser] for pair in trainer.pairs]).mean(0)
    direction = direction / direction.pow(2).mean().sqrt()
    gains = []
    for prompt, made in samples:
        latents = made.latents + SHIFT * made.latents.float().std() * direction.to(made.latents)
        frames = trainer.family.decode(latents[None])[0].float()
        gains.append(float(trainer.reward.combine(trainer.reward.per_model(frames, prompt)).mean()) - made.score)
    return torch.tensor(gains, dtype=torch.float64)
