"""The pack's main job on an embedded default: train a reward LoRA for a tiny built-in video model.

    python -m video_reward_lora.training.demo [--output demo_output] [--steps 40]

A tiny CogVideoX-Fun V1.1 InP model and a tiny Aesthetic v2.5 reward (random weights, seeded) are written in their
official file formats and loaded through the real loaders; a training job then runs the seeds' method (gradients
through the last denoising step and the decode of the first latent) on CPU, and the held-out reward before and after
is printed, with the curves (`curves.png`) and the first frames before/after (`before_after.png`).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from ..reward.plot import save_frames, save_png
from ..reward.quiet import quiet_libraries
from ..reward.tiny import write_reward_models
from .engine.engine import held_out_generator
from .methods.reward_backprop import RewardBackprop
from .config import TrainConfig
from .curves import training_curves
from .families.tiny import write_cogvideox_fun
from .jobs.jobs import create_job
from .jobs.runner import run_job

PROMPTS = ["a red ball rolling across a sunny field", "a cat on a blue sofa", "a dog running on the beach at dusk",
           "a field of flowers in the wind", "a city street at night in the rain", "a sailing boat on a calm lake"]
HELD_OUT = ["a red cat in a sunny field", "a boat on the beach at dusk", "flowers on a city street"]


def _trainer(config: TrainConfig) -> RewardBackprop:
    return RewardBackprop.from_config(config, torch.float32, torch.device("cpu"))


def first_frames(config: TrainConfig, lora: Path | None) -> torch.Tensor:
    """The first frame of each held-out prompt's video (fixed seeds), with or without the trained LoRA."""
    trainer = _trainer(config)
    if lora is not None:
        trainer.load(lora)
    frames = []
    with torch.no_grad():
        for index, prompt in enumerate(HELD_OUT):
            frames.append(trainer.decoded_frames([prompt], held_out_generator(config.seed, index), [])[0, 0])
    return torch.stack(frames)


def run(output: Path, steps: int) -> tuple[float, float]:
    started = time.perf_counter()
    models = output / "models"
    folder = write_cogvideox_fun(models / "CogVideoX_Fun" / "CogVideoX-Fun-V1.1-2b-InP")
    rewards = write_reward_models(models / "reward_models", ("aesthetic_v2.5",))
    print(f"built a tiny CogVideoX-Fun model and a tiny Aesthetic v2.5 reward (random weights, seed 0) in {models}")
    config = TrainConfig.from_dict(dict(
        family="cogvideox", model={"folder": str(folder)}, rewards=[{"key": "aesthetic_v2.5"}], reward_roots=[str(rewards)],
        prompts=PROMPTS, validation_prompts=HELD_OUT, validation_every=10, height=64, width=64, frames=9, steps=8,
        rank=8, alpha=8.0, learning_rate=1e-2, max_steps=steps, checkpoint_every=max(1, steps // 2), sample_every=10,
        gradient_checkpointing=False,
    ))
    job = create_job(output / "jobs", config, name="demo")
    print(f"job {job.path}: {steps} steps, gradients through the last of {config.steps} denoising steps, reward on the first frame")
    state = run_job(job.path)
    if state != "finished":
        raise SystemExit(f"training {state}: {job.status().get('reason')}")
    metrics = job.metrics()
    held_out = [m["val_reward"] for m in metrics if "val_reward" in m]
    before, after = held_out[0], held_out[-1]
    print(f"\nheld-out reward ({len(HELD_OUT)} prompts, fixed seeds): before {before:.5f} -> after {after:.5f} ({after - before:+.5f})")
    spread = statistics.stdev(_trainer(dataclasses.replace(config, seed=seed)).evaluate(HELD_OUT) for seed in range(1, 5))
    print(f"seed-to-seed spread of the untrained model's held-out reward: {spread:.5f} (the gain is {(after - before) / spread:.0f}x that)")
    save_png(training_curves(metrics, config.loss, config.max_grad_norm), output / "curves.png")
    frames = torch.cat([first_frames(config, None), first_frames(config, job.latest_checkpoint())])
    captions = [f"{when}: {prompt}" for when in ("before", "after") for prompt in HELD_OUT]
    save_frames(frames, output / "before_after.png", captions, columns=len(HELD_OUT))
    print(f"LoRA: {job.lora}\ncurves: {output / 'curves.png'}  first frames (top: before, bottom: after): "
          f"{output / 'before_after.png'}  ({time.perf_counter() - started:.0f} s)")
    return before, after


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where models, the job and images go")
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    args = parser.parse_args(argv)
    quiet_libraries()
    run(args.output, args.steps)


if __name__ == "__main__":
    main()
