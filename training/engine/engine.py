"""The training engine: a LoRA on one transformer of a family, stepped by AdamW over `accumulation` micro-batches on one
process, under plain data parallelism, FSDP2 (`distributed.sharding`) or DeepSpeed ZeRO (`distributed.zero`), with
clipping, NaN detection, checkpoints that resume exactly and each step's metrics. A method subclasses `Engine` and
supplies what it loads (`from_config`, and `trained_expert` / `lora_targets` where the defaults do not fit), the loss
of one micro-batch (`loss`) and its evaluation (`evaluate`).

Every random draw of a micro-batch comes from the generator `step_generator` gives it, seeded by (seed, step,
micro-batch, process) through `reward.seeds` (any seed in 0..2^64-1), so a run resumed from a checkpoint repeats the
uninterrupted run's losses exactly, and each data-parallel process draws its own batch. With several processes the LoRA
gradients are averaged before clipping, so every process applies the same update; under FSDP the sharded backward
averages them, and under DeepSpeed the engine reduces, clips and steps; saving gathers the slices (every process calls
`save`, the main one writes).

The memory options act on the trained transformer for every method: fp8 base weights (`fp8`), block swap and
activation offload (`offload`), the last two around each micro-batch's loss and its backward.
"""
from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...reward.composite import CompositeReward
from ...reward.files import atomic_folder, write_json_atomic
from ...reward.seeds import derive_seed, seeded_generator
from ..build import load_reward_mix
from ..config import TrainConfig
from ..distributed import zero
from ..distributed.sharding import full, shard, wants_fsdp
from ..families.base import VideoFamily
from ..lora.adapters import add_trainable, export
from ..lora.formats import Lora, write_lora
from ..scored import scored_sample
from .checkpoint import gather_state, load_state, save_state
from .fp8 import quantise_linears
from .guards import diversity, embedder
from .offload import BlockSwap, saved_tensors

ADAPTER = "reward_train"
EXTRA_FILE = "extra.json"  # in a checkpoint: the job's own state at that step
# The first key under the config's seed of the micro-batch draws; a method keys its other kinds of draw from 1 on, so
# that no two kinds share a stream: (STEP_DRAWS, step, micro-batch, process) seeds `MicroBatch.generator`
STEP_DRAWS = 0
# (HELD_OUT_NOISE, index): the noise of held-out prompt `index`, the same at every evaluation and for every method
HELD_OUT_NOISE = 2


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The generator of a training micro-batch's random draws."""
    return seeded_generator(seed, STEP_DRAWS, step, micro, rank)


def held_out_generator(seed: int, index: int) -> torch.Generator:
    """The generator of held-out prompt `index`'s noise."""
    return seeded_generator(seed, HELD_OUT_NOISE, index)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@dataclass
class MicroBatch:
    """One micro-batch of an optimizer step: where it is, and the generator of its random draws."""

    seed: int
    step: int
    index: int
    rank: int
    generator: torch.Generator

    def derived_seed(self, kind: int) -> int:
        """A seed of this micro-batch's own for another kind of draw (`kind` >= 1)."""
        return derive_seed(self.seed, kind, self.step, self.index, self.rank)


class Engine(ABC):
    """A LoRA trainer on one transformer of `family`; subclasses supply the method (see the module docstring)."""

    last_frames: torch.Tensor | None = None  # `[N,3,H,W]` frames of the last micro-batch, for the job's sample images

    def __init__(self, config: TrainConfig, family: VideoFamily, accelerator: Any = None) -> None:
        self.config = config
        self.family = family
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.main = accelerator.is_main_process if accelerator else True
        self.sharded = wants_fsdp(config.fsdp, accelerator)
        if zero.in_use(accelerator) and (config.block_swap or config.fp8_base):
            raise ValueError(f"{'block_swap' if config.block_swap else 'fp8_base'} does not work under DeepSpeed ZeRO, "
                             "which places the weights itself; launch without DeepSpeed")
        transformers = family.transformers
        self.expert = self.trained_expert()
        self.transformer = transformers[self.expert]
        targets, skip = self.lora_targets()
        with torch.random.fork_rng(devices=[]):  # the same initial LoRA on every run and every process
            torch.manual_seed(config.seed)
            self.params = add_trainable(self.transformer, family.lora_family, config.rank, config.alpha, targets, skip,
                                        ADAPTER)
        if config.fp8_base:  # every transformer: Wan2.2's idle expert too (frozen, but sampled through)
            for module in transformers.values():
                quantise_linears(module)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.swap = None  # the trained transformer's block swap
        self.idle_swaps: dict[str, BlockSwap] = {}  # Wan2.2's other expert's
        if config.block_swap:
            for name, module in transformers.items():
                swap = BlockSwap(module, config.block_swap, family.device)
                if name == self.expert:
                    self.swap = swap
                else:
                    self.idle_swaps[name] = swap
                family.route(name, module)  # placed by the swap: never moved whole (Wan's idle offload)
        elif config.fp8_base:  # loaded on the CPU (build.load_family), quantised there, now placed; Wan2.2's idle
            for name, module in transformers.items():  # expert too, unless the family moves it in whenever it runs
                if name == self.expert or not family.offload_idle:
                    module.to(family.device)
        if self.sharded:
            for module in transformers.values():
                shard(module, family.device)
            named = dict(self.transformer.named_parameters())
            self.params = {name: named[name] for name in self.params}  # sharding replaced them with DTensors
        self.optimizer = self._optimizer()
        self.deepspeed = None  # the DeepSpeed engine of the trained transformer, under ZeRO
        if zero.in_use(accelerator):
            for note in zero.configure(accelerator, config):
                if self.main:
                    print(note, flush=True)
            self.deepspeed, _ = accelerator.prepare(self.transformer, self.optimizer)
            family.route(self.expert, self.deepspeed)
        self.step = 0
        self.autocast = (torch.autocast(family.device.type, dtype=family.dtype)
                         if family.dtype != torch.float32 else contextlib.nullcontext())
        self.judge = (load_reward_mix(config.judge, config.reward_roots, family.dtype, family.device)
                      if config.judge else None)  # the held-out judge (`guards`), never trained on

    def trained_expert(self) -> str:
        """The transformer the LoRA trains: the config's expert (Wan2.2), else the family's one transformer."""
        transformers = self.family.transformers
        return self.config.expert if self.config.expert in transformers else next(iter(transformers))

    def lora_targets(self) -> tuple[list[str] | None, list[str]]:
        """The module names the LoRA targets (None: the family's defaults) and those it skips (Wan2.2: the FFNs)."""
        c = self.config
        return c.lora_targets, c.lora_skip if c.lora_skip is not None else (["ffn"] if c.family == "wan2.2" else [])

    @abstractmethod
    def loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        """The method's loss of one micro-batch (run under the engine's autocast) and its metrics: scalar tensors are
        averaged over the micro-batches and processes, anything else is recorded as the last micro-batch gave it."""

    @abstractmethod
    def evaluate(self, prompts: list[str]) -> float:
        """The method's held-out score (every process calls it: sharded weights need them all)."""

    validation_key = "val_reward"  # the name of `evaluate`'s score in the job's metrics

    def validating(self) -> bool:
        """Whether the job evaluates held-out data (by default: when the config gives validation prompts)."""
        return bool(self.config.validation_prompts)

    def validation(self) -> dict[str, float]:
        """The held-out scores to record, by metric name (by default `evaluate`'s on the validation prompts)."""
        return {self.validation_key: self.evaluate(self.config.validation_prompts)}

    def held_out_score(self, reward: CompositeReward, prompts: list[str]) -> float:
        """The mean score by `reward` of `prompts`, each sampled whole (every frame decoded) from its fixed noise."""
        scores = []
        for index, prompt in enumerate(prompts):
            with self.autocast:
                made = scored_sample(self.family, reward, prompt, self.config, held_out_generator(self.config.seed, index))
            scores.append(made.score)
        return sum(scores) / len(scores)

    def judged(self) -> dict[str, float]:
        """The judge's score of the validation prompts and, with `diversity_seeds`, the diversity ({} without a judge)."""
        c = self.config
        if self.judge is None:
            return {}
        scores = {"judge": self.held_out_score(self.judge, c.validation_prompts)}
        model = embedder(self.judge)
        if c.diversity_seeds and model is not None:
            with self.autocast:
                scores["diversity"] = diversity(self.family, model, c.validation_prompts, c, c.seed, c.diversity_seeds)
        return scores

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

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (over `accumulation` micro-batches); returns its metrics."""
        c = self.config
        started = time.perf_counter()
        if self.deepspeed is None:
            self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        averaged: dict[str, list[torch.Tensor]] = {}
        as_given: dict[str, Any] = {}
        for micro in range(c.accumulation):
            batch = MicroBatch(c.seed, self.step, micro, self.rank, step_generator(c.seed, self.step, micro, self.rank))
            with self.autocast, saved_tensors(c.activation_offload, self.swap, self.family.device):
                loss, metrics = self.loss(batch)
            self._backward(loss)
            losses.append(loss.detach().float())
            for key, value in metrics.items():
                if isinstance(value, torch.Tensor):
                    averaged.setdefault(key, []).append(value.detach().float())
                else:
                    as_given[key] = value
        means = torch.stack([torch.stack(losses).mean(), *(torch.stack(values).mean() for values in averaged.values())])
        params = list(self.params.values())
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means.to(self.accelerator.device), "mean").cpu()
            if not self.sharded and self.deepspeed is None:
                self._average_gradients(params)
        loss = means[0]
        grad_norm = self._clip(params)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            what = "loss" if not torch.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(f"the {what} became {float(loss if what == 'loss' else grad_norm)} at step {self.step + 1}")
        if self.deepspeed is None:
            self.optimizer.step()
        self.step += 1
        return {"step": self.step, "loss": float(loss), **{key: float(v) for key, v in zip(averaged, means[1:])},
                "grad_norm": float(grad_norm), "lr": self.optimizer.param_groups[0]["lr"],
                "time": time.perf_counter() - started, "memory_mib": peak_memory_mib(self.family.device), **as_given}

    def _backward(self, loss: torch.Tensor) -> None:
        if self.deepspeed is not None:
            # not accelerate's backward: outside `accumulate` (a prepared-model loop) it makes every micro-batch a step
            self.deepspeed.backward(loss)  # DeepSpeed divides by the accumulation, and reduces, clips and steps after
            self.deepspeed.step()  # the last micro-batch
        else:
            # not accelerate's backward/accumulate: the sampled transformers are no prepared DDP module to sync
            (loss / self.config.accumulation).backward()

    def _clip(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """Clip the gradients to `max_grad_norm`; returns their norm before clipping."""
        if self.deepspeed is not None:  # ZeRO skips the update of a non-finite gradient: the weights stay the last good ones
            return torch.tensor(float(self.deepspeed.get_global_grad_norm() if self.deepspeed.was_step_applied() else "nan"))
        # torch's clip: accelerate's clip_grad_norm_ gives the same bits but needs an accelerator, which tests and demo lack
        return full(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.config.max_grad_norm))

    def _average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Plain data parallelism: every process's LoRA gradients become their mean (one collective call)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), "mean")
        for param, chunk in zip(params, flat.split([g.numel() for g in grads])):
            param.grad = chunk.view_as(param).to(param.dtype)

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """A checkpoint: the LoRA in the published format (loadable as it is) plus the exact trainer state, and
        `extra` (the job's own state, e.g. the judge watch) as `extra.json`."""
        lora, state = self._lora(), self._state()
        if not self.main:
            return
        with atomic_folder(folder) as staging:
            write_lora(lora, staging / "lora.safetensors", "videox")
            save_state(staging, state)
            if extra is not None:
                write_json_atomic(staging / EXTRA_FILE, extra)

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        if self.deepspeed is None:
            return gather_state(self.step, self.params, self.optimizer)
        return zero.gather_state(self.step, self.params, self.deepspeed)

    def load(self, folder: Path) -> None:
        if self.deepspeed is None:
            self.step = load_state(folder, self.params, self.optimizer)
        else:
            self.step = zero.load_state(folder, self.params, self.deepspeed)

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
