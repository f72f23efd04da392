"""Reward backpropagation: sample with gradients kept on chosen steps, decode the first latents, score the frames,
and step a LoRA on the transformer (the seeds' method; VADER's cut-off and DRTune as options).

Every random draw of a training step (prompts, noise, chosen steps, scored frames) comes from a generator seeded by
(seed, step, micro-batch, process) through `reward.seeds` (any seed in 0..2^64-1), so a run resumed from a checkpoint
repeats the uninterrupted run's losses exactly, and each data-parallel process draws its own batch. With several
processes the LoRA gradients are averaged through accelerate before clipping, so every process applies the same
update; under FSDP (`training.sharding`) the sharded backward averages them, and under DeepSpeed (`training.zero`) the
engine reduces, clips and steps; saving gathers the slices (every process calls `save`, the main one writes).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from ..reward.composite import reward_loss, select_frames
from ..reward.files import atomic_folder
from ..reward.seeds import derive_seed, seeded_generator
from .build import RewardObjective, load_family, load_objective
from . import zero
from .checkpoint import gather_state, load_state, save_state
from .config import TrainConfig, read_prompts
from .families.base import VideoFamily
from .lora.adapters import add_trainable, export
from .lora.formats import Lora, write_lora
from .sampler import sample
from .sharding import full, shard, wants_fsdp
from .steps import grad_steps

ADAPTER = "reward_train"
# The first key under the config's seed of each kind of random draw, so that no two kinds share a stream:
STEP_DRAWS = 0  # (STEP_DRAWS, step, micro-batch, process): a micro-batch's prompts, noise and steps with gradients
STEP_FRAMES = 1  # (STEP_FRAMES, step, micro-batch, process): the frames it scores
HELD_OUT_DRAWS = 2  # (HELD_OUT_DRAWS, index): the noise of held-out prompt `index`, the same at every evaluation
HELD_OUT_FRAMES = 3  # (HELD_OUT_FRAMES, index): the frames scored for it


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The generator of a training micro-batch's prompts, noise and steps with gradients."""
    return seeded_generator(seed, STEP_DRAWS, step, micro, rank)


def held_out_generator(seed: int, index: int) -> torch.Generator:
    """The generator of held-out prompt `index`'s noise (the same at every evaluation)."""
    return seeded_generator(seed, HELD_OUT_DRAWS, index)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class RewardBackprop:
    """The trainer: a LoRA on one transformer of `family`, optimised to raise `objective` on the config's prompts."""

    def __init__(self, config: TrainConfig, family: VideoFamily, objective: RewardObjective, accelerator: Any = None) -> None:
        self.config = config
        self.family = family
        self.objective = objective
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.main = accelerator.is_main_process if accelerator else True
        self.sharded = wants_fsdp(config.fsdp, accelerator)
        self.prompts = config.prompts or read_prompts(Path(config.prompts_file))
        transformers = family.transformers
        self.expert = config.expert if config.expert in transformers else next(iter(transformers))
        self.transformer = transformers[self.expert]
        skip = config.lora_skip if config.lora_skip is not None else (["ffn"] if config.family == "wan2.2" else [])
        with torch.random.fork_rng(devices=[]):  # the same initial LoRA on every run and every process
            torch.manual_seed(config.seed)
            self.params = add_trainable(self.transformer, family.lora_family, config.rank, config.alpha,
                                        config.lora_targets, skip, ADAPTER)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if config.vae_gradient_checkpointing:
            family.vae.enable_gradient_checkpointing()
        if self.sharded:
            for module in transformers.values():
                shard(module, family.device)
            named = dict(self.transformer.named_parameters())
            self.params = {name: named[name] for name in self.params}  # sharding replaced them with DTensors
        self.optimizer = self._optimizer()
        self.engine = None
        if zero.in_use(accelerator):
            for note in zero.configure(accelerator, config):
                if self.main:
                    print(note, flush=True)
            self.engine, _ = accelerator.prepare(self.transformer, self.optimizer)
            family.route(self.expert, self.engine)
        self.step = 0
        if self.main and family.sampling_settings():
            print(self.sampling_note(), flush=True)
        self.autocast = (torch.autocast(family.device.type, dtype=family.dtype)
                         if family.dtype != torch.float32 else contextlib.nullcontext())

    @classmethod
    def from_config(cls, config: TrainConfig, dtype: torch.dtype, device: torch.device) -> "RewardBackprop":
        """A trainer on the config's model and reward, loaded from their files."""
        return cls(config, load_family(config, dtype, device), load_objective(config, dtype, device))

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = list(self.params.values())
        if c.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise RuntimeError("the 8-bit AdamW optimizer needs bitsandbytes (pip install bitsandbytes)") from err
            return bnb.optim.AdamW8bit(params, lr=c.learning_rate, weight_decay=c.weight_decay, eps=c.adam_eps)
        return torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay, eps=c.adam_eps)

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

    def decoded_frames(self, prompts: list[str], generator: torch.Generator, chosen: list[int]) -> torch.Tensor:
        c = self.config
        latents = sample(self.family, prompts, c.negative_prompt, c.frames, c.height, c.width, c.steps, c.guidance,
                         generator, grad_steps=chosen, stop_input_gradient=c.stop_input_gradient)
        return self.family.decode(latents, first_n=c.decoded_latents)

    def _rewards(self, frames: torch.Tensor, prompts: list[str], seed: int) -> torch.Tensor:
        indices = select_frames(frames.shape[1], self.config.frame_mode, self.config.frame_count, seed)
        return torch.stack([self.objective.reward(frames[b, indices], prompts[b]).mean() for b in range(len(prompts))])

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (over `accumulation` micro-batches); returns its metrics."""
        c = self.config
        started = time.perf_counter()
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)
        losses, rewards = [], []
        sample_frames = None
        for micro in range(c.accumulation):
            generator = step_generator(c.seed, self.step, micro, self.rank)
            prompts = [self.prompts[i] for i in torch.randint(len(self.prompts), (c.batch_size,), generator=generator)]
            chosen = self.chosen_steps(generator)
            with self.autocast:
                frames = self.decoded_frames(prompts, generator, chosen)
                reward = self._rewards(frames, prompts, seed=derive_seed(c.seed, STEP_FRAMES, self.step, micro, self.rank))
                loss = reward_loss(reward, self.objective.form, self.objective.target, self.objective.scale)
            if self.engine is None:
                (loss / c.accumulation).backward()
            else:  # the engine divides by the accumulation, and reduces, clips and steps after the last micro-batch
                self.engine.backward(loss)
                self.engine.step()
            losses.append(loss.detach().float())
            rewards.append(reward.detach().float().mean())
            sample_frames = frames.detach()[:, 0].float().cpu()
        loss, reward = torch.stack(losses).mean(), torch.stack(rewards).mean()
        params = list(self.params.values())
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            loss, reward = self.accelerator.reduce(torch.stack([loss, reward]).to(self.accelerator.device), "mean").cpu()
            if not self.sharded and self.engine is None:
                self._average_gradients(params)
        if self.engine is None:
            grad_norm = full(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], c.max_grad_norm))
        else:  # ZeRO skips the update of a non-finite gradient, so the weights stay those of the last good step
            grad_norm = torch.tensor(float(self.engine.get_global_grad_norm() if self.engine.was_step_applied() else "nan"))
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            what = "loss" if not torch.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(f"the {what} became {float(loss if what == 'loss' else grad_norm)} at step {self.step + 1}")
        if self.engine is None:
            self.optimizer.step()
        self.step += 1
        self.last_frames = sample_frames
        return {"step": self.step, "loss": float(loss), "reward": float(reward), "grad_norm": float(grad_norm),
                "lr": self.optimizer.param_groups[0]["lr"], "time": time.perf_counter() - started,
                "memory_mib": peak_memory_mib(self.family.device), "grad_steps": chosen}

    def _average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), "mean")
        for param, chunk in zip(params, flat.split([g.numel() for g in grads])):
            param.grad = chunk.view_as(param).to(param.dtype)

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

    def save(self, folder: Path) -> None:
        """A checkpoint: the LoRA in the published format (loadable as it is) plus the exact trainer state."""
        lora, state = self._lora(), self._state()
        if not self.main:
            return
        with atomic_folder(folder) as staging:
            write_lora(lora, staging / "lora.safetensors", "videox")
            save_state(staging, state)

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        if self.engine is None:
            return gather_state(self.step, self.params, self.optimizer)
        return zero.gather_state(self.step, self.params, self.engine)

    def load(self, folder: Path) -> None:
        if self.engine is None:
            self.step = load_state(folder, self.params, self.optimizer)
        else:
            self.step = zero.load_state(folder, self.params, self.engine)

    def whole_params(self) -> contextlib.AbstractContextManager:
        """Inside, the LoRA weights are whole on every process (DeepSpeed stage 3 partitions them otherwise)."""
        return zero.gathered(self.params.values())

    def _lora(self) -> Lora:
        with self.whole_params():
            return export(self.transformer, self.family.lora_family, ADAPTER, dtype=self.family.dtype)

    def write_lora(self, path: Path) -> Path:
        """The trained LoRA in the published reward-LoRA format (what the LoRA nodes and ComfyUI's loader read); the
        main process writes it."""
        lora = self._lora()
        return write_lora(lora, path, "videox") if self.main else path
