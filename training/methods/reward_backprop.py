"""Reward backpropagation: sample with gradients kept on chosen steps, decode the first latents, score the frames,
and step a LoRA on the transformer (the seeds' method; VADER's cut-off and DRTune as options), as a method of the
training engine (`engine.engine`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...reward.composite import reward_loss, select_frames
from ...reward.seeds import derive_seed
from ...reward.temporal import Dynamism
from ..build import RewardObjective, load_family, load_objective
from ..config import TrainConfig, read_prompts
from ..distributed.sharding import wants_fsdp
from ..engine.engine import Engine, MicroBatch, held_out_generator
from ..families.base import VideoFamily
from ..lora.adapters import disabled
from ..sampler import sample_as
from ..steps import grad_steps

# The first keys under the config's seed of this method's kinds of random draw (0 is the engine's micro-batch draws:
# a micro-batch's prompts, noise and steps with gradients):
STEP_FRAMES = 1  # (STEP_FRAMES, step, micro-batch, process): the frames a micro-batch scores
HELD_OUT_FRAMES = 3  # (HELD_OUT_FRAMES, index): the frames scored for held-out prompt `index` (its noise: engine's)
MOTION_FLOOR = 1e-8  # the base dynamism below which a clip counts as still (no motion to lose)


class RewardBackprop(Engine):
    """A LoRA on one transformer of `family`, optimised to raise `objective` on the config's prompts."""

    def __init__(self, config: TrainConfig, family: VideoFamily, objective: RewardObjective, accelerator: Any = None) -> None:
        self.objective = objective
        self.prompts = config.prompts or read_prompts(Path(config.prompts_file))
        if config.vae_gradient_checkpointing:
            family.vae.enable_gradient_checkpointing()
        super().__init__(config, family, accelerator)
        self.motion = Dynamism("Dynamism")  # the dynamism guard's measure (reward.temporal)
        if self.main and family.sampling_settings():
            print(self.sampling_note(), flush=True)

    @classmethod
    def from_config(cls, config: TrainConfig, dtype: torch.dtype, device: torch.device) -> "RewardBackprop":
        """A trainer on the config's model and reward, loaded from their files."""
        return cls(config, load_family(config, dtype, device), load_objective(config, dtype, device))

    @classmethod
    def for_job(cls, config: TrainConfig, dtype: torch.dtype, device: torch.device, accelerator: Any) -> "RewardBackprop":
        """A trainer for a job process: the prompts' embeddings computed once and the text encoders freed."""
        prompts = config.prompts or read_prompts(Path(config.prompts_file))  # a missing file fails before any model loads
        objective = load_objective(config, dtype, device)
        family = load_family(config, dtype, device, sharded=wants_fsdp(config.fsdp, accelerator))
        # the training prompts are encoded apart from the validation ones, so changing those leaves training exact
        family.encode(list(dict.fromkeys([*prompts, config.negative_prompt])))
        if config.validation_prompts:
            family.encode(config.validation_prompts)
        family.release_text_encoders()
        return cls(config, family, objective, accelerator)

    def chosen_steps(self, generator: torch.Generator) -> list[int]:
        """Sampler step indices that keep gradients, drawn among the steps the trained transformer runs (for Wan2.2,
        the trained expert's steps, as VideoX-Fun counts them)."""
        c = self.config
        scheduler = self.family.schedule(c.steps)
        mine = [i for i, t in enumerate(scheduler.timesteps) if self.family.expert(t) == self.expert]
        if not mine:
            raise ValueError(f"with {c.steps} steps the {self.expert} transformer runs no step; use more steps")
        chosen = grad_steps(c.strategy, len(mine), c.backprop_steps, generator, c.random_start, c.random_end, c.step_list)
        return [mine[i] for i in chosen]

    def sampling_note(self) -> str:
        """The schedule's model-dependent settings (Wan2.2: shift and boundary) and the steps each transformer runs."""
        names = [self.family.expert(t) for t in self.family.schedule(self.config.steps).timesteps]
        runs = [f"steps {names.index(name)}-{len(names) - 1 - names[::-1].index(name)} on the {name} transformer"
                for name in self.family.transformers if name in names]
        settings = ", ".join(f"{key} {value:g}" for key, value in self.family.sampling_settings().items())
        return f"{self.family.name} sampling: {settings}; of {len(names)} steps, {', '.join(runs)}"

    def decoded_frames(self, prompts: list[str], generator: torch.Generator, chosen: list[int],
                       on_grad_prediction: Any = None) -> torch.Tensor:
        c = self.config
        latents = sample_as(self.family, prompts, c, generator, grad_steps=chosen, stop_input_gradient=c.stop_input_gradient,
                            on_grad_prediction=on_grad_prediction)
        return self.family.decode(latents, first_n=c.decoded_latents)

    def _drift(self, drifts: list[torch.Tensor]) -> Any:
        """A sampler hook that appends each grad step's mean squared difference from the LoRA-off prediction."""
        def measure(model_input: torch.Tensor, t: torch.Tensor, text: Any, condition: torch.Tensor,
                    prediction: torch.Tensor) -> None:
            with torch.no_grad(), disabled(self.transformer):
                reference = self.family.predict(model_input, t, text, condition)
            drifts.append((prediction.float() - reference.float()).square().mean())
        return measure

    def _lost_motion(self, frames: torch.Tensor, prompts: list[str], noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The dynamism guard: the mean over the batch of max(0, 1 − dynamism / base dynamism), where the base is
        the LoRA-off sample from the same noise (`noise`: the generator's state before sampling)."""
        base_generator = torch.Generator()  # the micro-batch's generators are CPU ones (reward.seeds)
        base_generator.set_state(noise)
        with torch.no_grad(), disabled(self.transformer):
            base = self.decoded_frames(prompts, base_generator, [])
        motion = torch.cat([self.motion(clip) for clip in frames])
        base_motion = torch.cat([self.motion(clip) for clip in base]).clamp_min(MOTION_FLOOR)
        lost = (1 - motion / base_motion).clamp_min(0).mean()
        return lost, {"dynamism": motion.detach().mean(), "dynamism_base": base_motion.mean()}

    def _rewards(self, frames: torch.Tensor, prompts: list[str], seed: int) -> torch.Tensor:
        indices = select_frames(frames.shape[1], self.config.frame_mode, self.config.frame_count, seed)
        return torch.stack([self.objective.reward(frames[b], prompts[b], indices).mean() for b in range(len(prompts))])

    def loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        """Sample `batch_size` drawn prompts with gradients on the chosen steps, decode, score; the loss of the reward."""
        c, generator = self.config, batch.generator
        prompts = [self.prompts[i] for i in torch.randint(len(self.prompts), (c.batch_size,), generator=generator)]
        chosen = self.chosen_steps(generator)
        noise = generator.get_state()
        drifts: list[torch.Tensor] = []
        frames = self.decoded_frames(prompts, generator, chosen, self._drift(drifts) if c.drift_weight else None)
        reward = self._rewards(frames, prompts, seed=batch.derived_seed(STEP_FRAMES))
        self.last_frames = frames.detach()[:, 0].float().cpu()
        loss = reward_loss(reward, self.objective.form, self.objective.target, self.objective.scale)
        metrics: dict[str, Any] = {"reward": reward.detach().float().mean(), "grad_steps": chosen}
        if drifts:
            drift = torch.stack(drifts).mean()
            loss = loss + c.drift_weight * drift
            metrics["drift"] = drift.detach()
        if c.dynamism_weight:
            lost, measured = self._lost_motion(frames, prompts, noise)
            loss = loss + c.dynamism_weight * lost
            metrics.update(measured, lost_motion=lost.detach())
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, prompts: list[str]) -> float:
        """Mean reward on `prompts`, each sampled with a fixed seed (the same noise at every evaluation)."""
        c = self.config
        scores = []
        for index, prompt in enumerate(prompts):
            with self.autocast:
                frames = self.decoded_frames([prompt], held_out_generator(c.seed, index), [])
                scores.append(float(self._rewards(frames, [prompt], seed=derive_seed(c.seed, HELD_OUT_FRAMES, index))[0]))
        return sum(scores) / len(scores)
