"""The training engine and its method plug-ins: reward backpropagation on the engine repeats, bit for bit, the losses the
trainer gave before the engine was split out, and a toy method defined here trains through the engine with
accumulation and an exact resume."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from test_training import tiny_config
from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.build import load_family
from video_reward_lora.training.engine.engine import Engine, MicroBatch, step_generator
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.families.tiny_wan import write_wan22
from video_reward_lora.training.methods.reward_backprop import RewardBackprop

# (loss, grad_norm, reward) of steps 1-3, recorded with `RewardBackprop` of training/backprop.py before the engine
# existed (commit 194b05e), on the settings of `test_reward_backprop_repeats_the_losses_from_before_the_engine`
BEFORE_THE_ENGINE = {
    "cogvideox": [(-0.5514737963676453, 0.0007465656381100416, 5.514738082885742),
                  (-0.5515690445899963, 0.0008963915170170367, 5.515690326690674),
                  (-0.5519399642944336, 0.0006284965202212334, 5.519399642944336)],
    "wan2.2": [(-0.5514475107192993, 5.4920732509344816e-05, 5.514474868774414),
               (-0.5513521432876587, 0.00010027436655946076, 5.513521194458008),
               (-0.5516677498817444, 0.0002394818584434688, 5.516677379608154)],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cogvideox": write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"), "wan2.2": write_wan22(root / "wan"),
            "rewards": write_reward_models(root / "reward_models", ("aesthetic_v2.5", "hps_v2.1"))}


@pytest.mark.parametrize("family, settings", [("cogvideox", {"accumulation": 2}), ("wan2.2", {"expert": "high"})])
def test_reward_backprop_repeats_the_losses_from_before_the_engine(models, family, settings):
    config = tiny_config(models, family, validation_prompts=[], **settings)
    trainer = RewardBackprop.from_config(config, torch.float32, torch.device("cpu"))
    records = [trainer.train_step() for _ in range(3)]
    assert [(r["loss"], r["grad_norm"], r["reward"]) for r in records] == BEFORE_THE_ENGINE[family]


class PullToTargets(Engine):
    """A toy method: each micro-batch draws a target near 1 for every LoRA weight; the loss is half the squared
    distance, so the gradient of a weight is (weight - target) and the optimizer pulls the LoRA towards 1."""

    def targets(self, generator: torch.Generator) -> list[torch.Tensor]:
        return [1 + 0.1 * torch.randn(p.shape, generator=generator) for p in self.params.values()]

    def loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        distances = [(p - t).pow(2).sum() for p, t in zip(self.params.values(), self.targets(batch.generator))]
        return 0.5 * torch.stack(distances).sum(), {"micro_batch": batch.index}

    def evaluate(self, prompts: list[str]) -> float:
        """The squared distance of the LoRA from 1, its held-out loss (no prompts needed)."""
        return float(sum((p.detach() - 1).pow(2).sum() for p in self.params.values()))


def _toy(models: dict[str, Path], **overrides) -> PullToTargets:
    config = tiny_config(models, accumulation=2, learning_rate=0.05, max_grad_norm=1e9, **overrides)
    return PullToTargets(config, load_family(config, torch.float32, torch.device("cpu")))


def test_a_method_plugged_into_the_engine_accumulates_and_resumes_exactly(models, tmp_path):
    toy = _toy(models)
    untrained = toy.evaluate([])
    start = [p.detach().clone() for p in toy.params.values()]
    first = toy.train_step()
    # independently: the gradient averaged over the 2 micro-batches is (weight - mean of the 2 targets)
    draws = [toy.targets(step_generator(toy.config.seed, 0, micro)) for micro in range(2)]
    expected = torch.stack([(w - (a + b) / 2).pow(2).sum() for w, a, b in zip(start, *draws)]).sum().sqrt()
    assert first["grad_norm"] == pytest.approx(float(expected), rel=1e-6)
    assert first["micro_batch"] == 1 and first["step"] == 1  # a metric that is no tensor: the last micro-batch's
    straight = [first] + [toy.train_step() for _ in range(3)]
    assert straight[-1]["loss"] < 0.9 * straight[0]["loss"] and toy.evaluate([]) < 0.9 * untrained

    stopped = _toy(models)
    for _ in range(2):
        stopped.train_step()
    stopped.save(tmp_path / "step-2")
    resumed = _toy(models)
    resumed.load(tmp_path / "step-2")
    assert resumed.step == 2
    again = [resumed.train_step() for _ in range(2)]
    assert [(r["loss"], r["grad_norm"]) for r in again] == [(r["loss"], r["grad_norm"]) for r in straight[2:]]
    assert all(torch.equal(a, b) for a, b in zip(resumed.params.values(), toy.params.values()))
