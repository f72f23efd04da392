"""Held-out samples of a DPO trainer's model, whether its pairs carry a preference that holds beyond their own prompts
(the reward change of samples whose latents move along the pairs' mean winner − loser latent difference; no training
involved), and two alignments that tell why DPO on a tiny random model does or does not turn that preference into
better samples."""
from __future__ import annotations

import torch

from video_reward_lora.reward.seeds import seeded_generator
from video_reward_lora.training.lora.adapters import disabled
from video_reward_lora.training.methods.dpo import DiffusionDPO, noised_pair
from video_reward_lora.training.scored import ScoredSample, scored_sample

SHIFT = 0.3  # of the sample's own latent standard deviation
HELD_OUT_NOISE = 1  # the first key of a held-out sample's noise seed


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def paired_t(gains: torch.Tensor) -> float:
    """The paired t statistic of per-sample gains (their mean over its standard error)."""
    return float(gains.mean() / gains.std() * len(gains) ** 0.5)


def pair_latents(trainer: DiffusionDPO) -> tuple[torch.Tensor, torch.Tensor]:
    """The latents of the trainer's training pairs: winners and losers, stacked in pair order."""
    return (torch.stack([trainer.latents[pair.winner] for pair in trainer.pairs]),
            torch.stack([trainer.latents[pair.loser] for pair in trainer.pairs]))


def mean_difference(trainer: DiffusionDPO) -> torch.Tensor:
    """The mean winner − loser latent difference of the trainer's training pairs."""
    winners, losers = pair_latents(trainer)
    return (winners - losers).mean(0)


def reward_of(trainer: DiffusionDPO, latents: torch.Tensor, prompt: str) -> torch.Tensor:
    """The trainer's reward mix of one sample's latents `[C,T,h,w]`, every frame decoded (a 0-dim tensor)."""
    return trainer.reward(trainer.family.decode(latents[None])[0].float(), prompt).mean()


def held_out_samples(trainer: DiffusionDPO, prompts: list[str], seeds: int) -> list[tuple[str, ScoredSample]]:
    """Every prompt sampled and scored at noise seeds 0..`seeds`−1 (prompt-major), with the trainer's LoRA as it is."""
    return [(prompt, scored_sample(trainer.family, trainer.reward, prompt, trainer.config,
                                   seeded_generator(seed, HELD_OUT_NOISE, index)))
            for index, prompt in enumerate(prompts) for seed in range(seeds)]


@torch.no_grad()
def shifted_gains(trainer: DiffusionDPO, samples: list[tuple[str, ScoredSample]]) -> torch.Tensor:
    """The reward gain of each (prompt, sample) when its latents move by `SHIFT` of their standard deviation along
    the mean winner − loser latent difference of the trainer's training pairs (scaled to unit RMS)."""
    direction = mean_difference(trainer)
    direction = direction / direction.pow(2).mean().sqrt()
    gains = []
    for prompt, made in samples:
        latents = made.latents + SHIFT * made.latents.float().std() * direction.to(made.latents)
        gains.append(float(reward_of(trainer, latents, prompt)) - made.score)
    return torch.tensor(gains, dtype=torch.float64)


def reward_gradient_alignment(trainer: DiffusionDPO, samples: list[tuple[str, ScoredSample]]) -> float:
    """The mean cosine between the reward's gradient at each sample's latents and the pairs' mean winner − loser
    difference: how much of what the pairs differ in is what the reward responds to."""
    direction = mean_difference(trainer)
    cosines = []
    for prompt, made in samples:
        latents = made.latents.detach().float().requires_grad_(True)
        with torch.enable_grad():
            gradient, = torch.autograd.grad(reward_of(trainer, latents, prompt), latents)
        cosines.append(_cosine(gradient, direction))
    return sum(cosines) / len(cosines)


@torch.no_grad()
def reference_alignment(trainer: DiffusionDPO, levels: int = 5) -> float:
    """The mean cosine, over the training pairs at `levels` evenly spaced timesteps of the trained transformer, between
    the reference's prediction difference (winner − loser, shared noise) and the pairs' latent difference; a timestep
    at which the noisy winner and loser coincide (zero signal-to-noise) is skipped. For ε-prediction winner and loser
    share the target, so DPO's first push on the predicted noise is minus this difference: samples move toward the
    winners only where it is positive, as for a denoiser."""
    generator = torch.Generator().manual_seed(0)
    winners, losers = pair_latents(trainer)
    text = trainer.family.encode([pair.caption for pair in trainer.pairs] * 2)
    cosines = []
    for k in torch.linspace(0, len(trainer.timesteps) - 1, levels).long().tolist():
        noise = torch.randn(winners.shape, generator=generator)
        noisy = noised_pair(winners, losers, noise, trainer.levels[k], trainer.prediction_type)
        if torch.equal(noisy.winner, noisy.loser):
            continue
        inputs = torch.cat([noisy.winner, noisy.loser]).to(trainer.family.device)
        with disabled(trainer.transformer):
            winner, loser = trainer.family.predict(inputs, trainer.timesteps[k], text,
                                                   trainer.family.conditioning(inputs, None)).cpu().chunk(2)
        cosines += [_cosine(w - l, d) for w, l, d in zip(winner, loser, winners - losers)]
    return sum(cosines) / len(cosines)
