"""The Diffusion-DPO loss (Wallace et al.; used by VideoDPO) over one batch of preference pairs, and the shared-noise
noisy inputs and targets it is computed from, for ε-prediction, v-prediction and flow-matching (velocity) families.

Winner and loser share the timestep and the noise, as reference Diffusion-DPO does (VideoDPO draws them independently,
which adds variance the preference does not explain), and each prediction's squared error is averaged over every
non-batch dimension, so there is one DPO term per pair (VideoDPO's 5-D port leaves the width dimension, one term per
column).

`DiffusionDPO` is the training method on the engine (`engine.engine`): the reference is the trained transformer with
its LoRA switched off, and one timestep and one noise are drawn per micro-batch, among the timesteps of the trained
transformer (for Wan2.2, those `family.expert` gives to the trained expert)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...reward.composite import CompositeReward
from ...reward.seeds import seeded_generator
from ..build import load_family, load_reward_mix
from ..config import TrainConfig
from ..distributed.sharding import wants_fsdp
from ..engine.engine import Engine, MicroBatch
from ..families.base import VideoFamily
from ..lora.adapters import disabled
from ..preference.dataset import PreferenceDataError, PreferenceDataset, PreferencePair
from ..preference.video import read_mp4

DEFAULT_BETA = 5000.0  # VideoDPO's configs/vc2_dpo/config.yaml
PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


@dataclass
class DPOResult:
    """The loss to backpropagate and the step's metrics (detached scalar tensors)."""

    loss: torch.Tensor
    implicit_accuracy: torch.Tensor  # fraction of pairs with inside > 0 (the policy prefers the winner more than the reference)
    reward_margin: torch.Tensor  # mean of the inside term
    drift: torch.Tensor  # mean squared difference between the policy's and the reference's predictions

    def metrics(self) -> dict[str, float]:
        """The metrics as plain numbers, for a log line."""
        return {"loss": self.loss.item(), "implicit_accuracy": self.implicit_accuracy.item(),
                "reward_margin": self.reward_margin.item(), "drift": self.drift.item()}


@dataclass
class NoisedPair:
    """Winner and loser noised with the same noise at the same level, and what the model should predict for each."""

    winner: torch.Tensor
    loser: torch.Tensor
    target_winner: torch.Tensor
    target_loser: torch.Tensor


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The squared error of each sample, averaged over all non-batch dimensions: shape [B], in float32."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def dpo_inside(policy_winner: torch.Tensor, policy_loser: torch.Tensor, reference_winner: torch.Tensor,
               reference_loser: torch.Tensor, target_winner: torch.Tensor, target_loser: torch.Tensor,
               beta: float = DEFAULT_BETA) -> torch.Tensor:
    """The DPO `inside` term of each pair, shape [B]: -β/2·[(m_w − m_l) − (r_w − r_l)], where m and r are the policy's
    and the reference's per-sample errors against the targets; the reference predictions are treated as constants."""
    tensors = {"policy_winner": policy_winner, "policy_loser": policy_loser, "reference_winner": reference_winner,
               "reference_loser": reference_loser, "target_winner": target_winner, "target_loser": target_loser}
    shape = policy_winner.shape
    for name, tensor in tensors.items():
        if tensor.shape != shape:
            raise ValueError(f"DPO: {name} has shape {tuple(tensor.shape)}, policy_winner {tuple(shape)}; all six must match")
    if policy_winner.ndim < 2:
        raise ValueError(f"DPO: predictions must be batched [B, ...], got shape {tuple(shape)}")
    if not beta > 0:
        raise ValueError(f"DPO: beta must be positive, got {beta}")
    policy_diff = per_sample_mse(policy_winner, target_winner) - per_sample_mse(policy_loser, target_loser)
    reference_diff = (per_sample_mse(reference_winner.detach(), target_winner)
                      - per_sample_mse(reference_loser.detach(), target_loser))
    return -0.5 * beta * (policy_diff - reference_diff)


def dpo_loss(policy_winner: torch.Tensor, policy_loser: torch.Tensor, reference_winner: torch.Tensor,
             reference_loser: torch.Tensor, target_winner: torch.Tensor, target_loser: torch.Tensor,
             beta: float = DEFAULT_BETA, weights: torch.Tensor | None = None) -> DPOResult:
    """Diffusion-DPO: mean(−weight·logsigmoid(inside)) over the pairs (see `dpo_inside`), with `weights` [B] the
    pairs' α re-weighting factors (all 1 when None), and the step's metrics."""
    inside = dpo_inside(policy_winner, policy_loser, reference_winner, reference_loser, target_winner, target_loser, beta)
    batch = inside.shape[0]
    if weights is None:
        weights = torch.ones(batch, device=inside.device)
    elif weights.shape != (batch,):
        raise ValueError(f"DPO: weights must have shape ({batch},), one per pair, got {tuple(weights.shape)}")
    loss = (-weights.to(inside.device, torch.float32) * F.logsigmoid(inside)).mean()
    with torch.no_grad():
        drift = (per_sample_mse(policy_winner, reference_winner) + per_sample_mse(policy_loser, reference_loser)).mean() / 2
        return DPOResult(loss, (inside > 0).float().mean(), inside.mean(), drift)


def _per_sample(level: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """`level` (a scalar or one value per sample) shaped to broadcast over `like` [B, ...], in float32."""
    level = torch.as_tensor(level, dtype=torch.float32, device=like.device)
    if level.ndim == 0:
        return level.expand(like.shape[0]).reshape(-1, *([1] * (like.ndim - 1)))
    if level.shape != (like.shape[0],):
        raise ValueError(f"the noise level must be a scalar or one value per sample ({like.shape[0]}), "
                         f"got shape {tuple(level.shape)}")
    return level.reshape(-1, *([1] * (like.ndim - 1)))


def noised(x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor | float,
           prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) for clean latents `x0` and `noise`, in float32. `level` is ā (the scheduler's alphas_cumprod at
    the timestep) for "epsilon" (x_t = √ā·x0 + √(1−ā)·ε, target ε) and "v_prediction" (same x_t, target
    √ā·ε − √(1−ā)·x0, as diffusers' get_velocity), and σ for "flow" (x_t = (1−σ)·x0 + σ·ε, target ε − x0, the
    velocity diffusers' FlowMatchEulerDiscreteScheduler integrates from σ to a lower σ)."""
    if x0.shape != noise.shape:
        raise ValueError(f"the clean latents {tuple(x0.shape)} and the noise {tuple(noise.shape)} must have one shape")
    x0, noise = x0.float(), noise.float()
    value = _per_sample(level, x0)
    if prediction_type == "flow":
        return (1 - value) * x0 + value * noise, noise - x0
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type '{prediction_type}'; expected one of {', '.join(PREDICTION_TYPES)}")
    signal, sigma = value.sqrt(), (1 - value).sqrt()
    x_t = signal * x0 + sigma * noise
    return x_t, noise if prediction_type == "epsilon" else signal * noise - sigma * x0


def noised_pair(x0_winner: torch.Tensor, x0_loser: torch.Tensor, noise: torch.Tensor, level: torch.Tensor | float,
                prediction_type: str) -> NoisedPair:
    """Winner and loser noised with the same `noise` at the same `level` (see `noised`)."""
    if x0_winner.shape != x0_loser.shape:
        raise ValueError(f"winner latents {tuple(x0_winner.shape)} and loser latents {tuple(x0_loser.shape)} must have one shape")
    winner, target_winner = noised(x0_winner, noise, level, prediction_type)
    loser, target_loser = noised(x0_loser, noise, level, prediction_type)
    return NoisedPair(winner, loser, target_winner, target_loser)


def alpha_bar(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """ā at integer training timesteps (a DDPM/DDIM scheduler's `alphas_cumprod` indexed by them), in float32."""
    timesteps = torch.as_tensor(timesteps).long()
    if timesteps.numel() and not (0 <= int(timesteps.min()) and int(timesteps.max()) < len(alphas_cumprod)):
        raise ValueError(f"timesteps must lie in 0..{len(alphas_cumprod) - 1}, got {timesteps.tolist()}")
    return alphas_cumprod.float().to(timesteps.device)[timesteps]


def prediction_type_of(scheduler: Any) -> str:
    """The target a family's scheduler (`family.new_scheduler()`) trains: "flow" for a flow-matching scheduler, else
    its configuration's `prediction_type` ("epsilon" or "v_prediction")."""
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(f"{type(scheduler).__name__}: prediction_type '{kind}' is not supported by DPO training "
                         "(epsilon or v_prediction)")
    return kind


def training_schedule(family: VideoFamily) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The target the family's scheduler trains (see `prediction_type_of`), its training timesteps, and the noise
    level of each as `noised` takes it: ā, or for flow matching σ through the family's own shift."""
    scheduler = family.new_scheduler()
    prediction_type = prediction_type_of(scheduler)
    count = scheduler.config.num_train_timesteps
    if prediction_type == "flow":
        schedule = family.schedule(count)
        return prediction_type, schedule.timesteps, schedule.sigmas[: len(schedule.timesteps)]
    timesteps = torch.arange(count)
    return prediction_type, timesteps, alpha_bar(scheduler.alphas_cumprod, timesteps)


# The first keys under the config's seed of this method's kinds of random draw (0 is the engine's micro-batch draws:
# a micro-batch's pairs, timestep and noise):
HELD_OUT_DRAWS = 1  # (HELD_OUT_DRAWS, pair, draw): a held-out pair's timestep and noise, the same at every evaluation
EVALUATION_DRAWS = 4  # (timestep, noise) draws per held-out pair


def clip_latents(family: VideoFamily, data: PreferenceDataset, config: TrainConfig) -> dict[int, torch.Tensor]:
    """The latents of every clip the pairs use, by clip index: the stored ones read, the others encoded once with the
    family's VAE (kept in memory; the dataset folder is left as it is)."""
    expected = family.latent_shape(1, config.frames, config.height, config.width)[1:]
    latents = {}
    for index in sorted({i for pair in data.pairs for i in (pair.winner, pair.loser)}):
        clip = data.clips[index]
        value = data.latents(index) if clip.latents is not None else family.encode_frames(read_mp4(clip.path)[None])[0].cpu()
        if tuple(value.shape) != expected:
            raise PreferenceDataError(f"{clip.latents or clip.path}: latents of shape {tuple(value.shape)}; {family.name} at "
                                      f"{config.frames} frames of {config.width}x{config.height} takes {expected}")
        latents[index] = value.float()
    return latents


class DiffusionDPO(Engine):
    """A LoRA on one transformer of `family`, trained by Diffusion-DPO on a preference dataset's pairs. Held out: the
    dataset's last `validation_pairs` pairs (implicit accuracy), and with a `reward` the validation prompts, sampled
    from fixed noise and scored whole with it (the held-out reward)."""

    validation_key = "val_implicit_accuracy"

    def __init__(self, config: TrainConfig, family: VideoFamily, data: PreferenceDataset, accelerator: Any = None,
                 reward: CompositeReward | None = None) -> None:
        self.reward = reward
        split = len(data.pairs) - config.validation_pairs
        self.pairs, self.held_out = data.pairs[:split], data.pairs[split:]
        self.latents = clip_latents(family, data, config)
        super().__init__(config, family, accelerator)
        self.prediction_type, timesteps, levels = training_schedule(family)
        mine = torch.tensor([family.expert(t) == self.expert for t in timesteps])
        if not mine.any():
            raise ValueError(f"the {self.expert} transformer denoises at no training timestep")
        self.timesteps, self.levels = timesteps[mine], levels[mine].float()

    @classmethod
    def for_job(cls, config: TrainConfig, dtype: torch.dtype, device: torch.device, accelerator: Any = None) -> "DiffusionDPO":
        """A trainer for a job process: the dataset read and checked before any model loads, the pairs' captions (and
        the validation prompts) embedded once and the text encoders freed; with validation prompts, the reward mix
        that scores them."""
        data = config.preference_dataset()
        reward = None
        if config.validation_prompts:
            reward = load_reward_mix(config.rewards, config.reward_roots, dtype, device)
        family = load_family(config, dtype, device, sharded=wants_fsdp(config.fsdp, accelerator))
        family.encode(list(dict.fromkeys(pair.caption for pair in data.pairs)))
        if config.validation_prompts:
            family.encode(list(dict.fromkeys([*config.validation_prompts, config.negative_prompt])))
        family.release_text_encoders()
        return cls(config, family, data, accelerator, reward)

    def _result(self, pairs: list[PreferencePair], generator: torch.Generator) -> DPOResult:
        """The DPO loss and metrics of `pairs` at one drawn timestep, winners and losers sharing one drawn noise."""
        device = self.family.device
        winners = torch.stack([self.latents[pair.winner] for pair in pairs]).to(device)
        losers = torch.stack([self.latents[pair.loser] for pair in pairs]).to(device)
        k = int(torch.randint(len(self.timesteps), (1,), generator=generator))
        noise = torch.randn(winners.shape, generator=generator, device=generator.device).to(device)
        noisy = noised_pair(winners, losers, noise, self.levels[k], self.prediction_type)
        inputs = torch.cat([noisy.winner, noisy.loser])
        text = self.family.encode([pair.caption for pair in pairs] * 2)
        condition = self.family.conditioning(inputs, None)
        t = self.timesteps[k]
        policy = self.family.predict(inputs, t, text, condition)
        with torch.no_grad(), disabled(self.transformer):
            reference = self.family.predict(inputs, t, text, condition)
        (policy_winner, policy_loser), (reference_winner, reference_loser) = policy.chunk(2), reference.chunk(2)
        weights = torch.tensor([pair.weight for pair in pairs])
        return dpo_loss(policy_winner, policy_loser, reference_winner, reference_loser, noisy.target_winner,
                        noisy.target_loser, self.config.beta, weights)

    def loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        """The DPO loss of `batch_size` drawn pairs."""
        drawn = torch.randint(len(self.pairs), (self.config.batch_size,), generator=batch.generator)
        result = self._result([self.pairs[i] for i in drawn], batch.generator)
        return result.loss, {"implicit_accuracy": result.implicit_accuracy, "reward_margin": result.reward_margin,
                             "drift": result.drift}

    def validating(self) -> bool:
        return bool(self.held_out) or self.reward is not None and bool(self.config.validation_prompts)

    def validation(self) -> dict[str, float]:
        scores = {self.validation_key: self.evaluate([])} if self.held_out else {}
        if self.reward is not None and self.config.validation_prompts:
            scores["val_reward"] = self.held_out_reward(self.config.validation_prompts)
        return scores

    def held_out_reward(self, prompts: list[str]) -> float:
        """The mean reward of `prompts`, each sampled (every frame decoded) from its fixed held-out noise."""
        return self.held_out_score(self.reward, prompts)

    @torch.no_grad()
    def evaluate(self, prompts: list[str]) -> float:
        """The implicit accuracy on the held-out pairs, each at `EVALUATION_DRAWS` fixed (timestep, noise) draws (the
        same at every evaluation); `prompts` is unused: the pairs carry their captions."""
        hits = []
        for index, pair in enumerate(self.held_out):
            for draw in range(EVALUATION_DRAWS):
                with self.autocast:
                    result = self._result([pair], seeded_generator(self.config.seed, HELD_OUT_DRAWS, index, draw))
                hits.append(float(result.implicit_accuracy))
        return sum(hits) / len(hits)
