"""Whether a preference dataset's pairs carry a preference that holds beyond their own prompts: the reward change of
samples whose latents move along the pairs' mean winner − loser latent difference (no training involved)."""
from __future__ import annotations

import torch

from video_reward_lora.training.methods.dpo import DiffusionDPO
from video_reward_lora.training.scored import ScoredSample

SHIFT = 0.3  # of the sample's own latent standard deviation


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
