"""Per family: time and peak memory of one training step, our loop against the seeds' loop, same config, same run.

    python tests/benchmarks/bench_training.py [--family cogvideox easyanimate wan2.2] [--steps 10] [--repeats 3]
    python tests/benchmarks/bench_training.py --full --family cogvideox wan2.2      # on a GPU

The seeds' loop (VideoX-Fun train_reward_lora) runs every denoising step with autograd on and detaches the model
output outside the chosen steps; ours runs those steps under `torch.no_grad()`. Both backpropagate the same loss
through the last step and the decode of the first latent, with the pack's tiny published-format models (CPU), or
with `--full` the real architectures with random weights on a GPU in bf16 at the seeds' training sizes (CogVideoX-Fun
2B and EasyAnimate 7B at 256x256x49 with 50 steps, a Wan2.2 A14B expert at 256x256x81 with 40 steps; rank 128,
gradient checkpointing, the idle Wan expert kept on the CPU). Each (family, loop) runs in a fresh process so peak
memory is its own; the ratios are printed.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SMALL = dict(height=64, width=64, frames=17, rank=8, alpha=8.0, gradient_checkpointing=False)
FULL = {"cogvideox": dict(height=256, width=256, frames=49, steps=50), "easyanimate": dict(height=256, width=256, frames=49, steps=50),
        "wan2.2": dict(height=256, width=256, frames=81, steps=40)}


def seeds_sample(family, prompts, frames, height, width, steps, guidance, generator, chosen):
    """The seeds' loop: autograd on at every step; outputs detached outside the chosen steps."""
    scheduler = family.schedule(steps, family.device)
    text = family.encode([""] * len(prompts)).cat(family.encode(prompts))
    latents = family.init_latents(len(prompts), frames, height, width, generator) * getattr(scheduler, "init_noise_sigma", 1.0)
    condition = torch.cat([family.conditioning(latents, None)] * 2)
    for index, t in enumerate(scheduler.timesteps):
        model_input = torch.cat([latents] * 2)
        if hasattr(scheduler, "scale_model_input"):
            model_input = scheduler.scale_model_input(model_input, t)
        prediction = family.predict(model_input, t, text, condition)
        negative, positive = prediction.chunk(2)
        prediction = negative + guidance * (positive - negative)
        if index not in chosen:
            prediction = prediction.detach()
        latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
    return latents


def measure(family_name: str, loop: str, steps: int, repeats: int, full: bool) -> dict[str, float]:
    from video_reward_lora.reward.tiny import write_reward_models
    from video_reward_lora.training.methods import reward_backprop as backprop
    from video_reward_lora.training.methods.reward_backprop import RewardBackprop
    from video_reward_lora.training.build import load_family, load_objective
    from video_reward_lora.training.config import TrainConfig
    from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate
    from video_reward_lora.training.families.tiny_wan import write_wan22

    from full_size import make_full_size

    root = Path(tempfile.mkdtemp())
    writers = {"cogvideox": lambda: {"folder": str(write_cogvideox_fun(root / "cog"))},
               "easyanimate": lambda: {"folder": str(write_easyanimate(root / "ea"))},
               "wan2.2": lambda: {k: str(v) for k, v in write_wan22(root / "wan").items()}}
    prompts = ["a red ball", "a cat"]
    sizes = FULL[family_name] if full else {**SMALL, "steps": steps}
    config = TrainConfig.from_dict(dict(
        family=family_name, model=writers[family_name](), rewards=[{"key": "aesthetic_v2.5"}],
        reward_roots=[str(write_reward_models(root / "rewards", ("aesthetic_v2.5",)))], prompts=prompts, **sizes))
    device = torch.device("cuda" if full else "cpu")
    dtype = torch.bfloat16 if full else torch.float32
    family = load_family(config, dtype, device)
    if full:
        make_full_size(family, family_name, ["", *prompts], torch.Generator().manual_seed(0))
    trainer = RewardBackprop(config, family, load_objective(config, dtype, device))
    if loop == "seeds":
        backprop.sample = lambda family, prompts, negative, frames, height, width, n, guidance, generator, grad_steps, **_: \
            seeds_sample(family, prompts, frames, height, width, n, guidance, generator, set(grad_steps))
    trainer.train_step()  # warm-up
    if full:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.train_step()
        if full:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if full else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": sorted(times)[len(times) // 2], "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["cogvideox", "easyanimate", "wan2.2"])
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per training sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="full-size random models on the GPU at the seeds' sizes")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.repeats, args.full)))
        return
    where = torch.cuda.get_device_name() if args.full else f"CPU, {torch.get_num_threads()} threads"
    sizes = "sizes per family as above" if args.full else f"{SMALL['frames']} frames {SMALL['width']}x{SMALL['height']}, {args.steps} steps"
    print(f"{where}; {sizes}; gradient through the last step, first latent decoded; median of {args.repeats} steps; "
          f"peak {'GPU memory allocated' if args.full else 'process RSS'}")
    print(f"{'family':<12} {'seeds s/step':>12} {'ours s/step':>12} {'speed-up':>9} {'seeds MiB':>10} {'ours MiB':>9} {'memory':>7}")
    for family in args.family:
        result = {}
        for loop in ("seeds", "ours"):
            out = subprocess.run([sys.executable, __file__, "--child", family, loop, "--steps", str(args.steps),
                                  "--repeats", str(args.repeats), *(["--full"] if args.full else [])],
                                 capture_output=True, text=True, check=True)
            result[loop] = json.loads(out.stdout.strip().splitlines()[-1])
        seeds, ours = result["seeds"], result["ours"]
        print(f"{family:<12} {seeds['seconds']:12.3f} {ours['seconds']:12.3f} {seeds['seconds'] / ours['seconds']:8.2f}x "
              f"{seeds['peak_mib']:10.0f} {ours['peak_mib']:9.0f} {ours['peak_mib'] / seeds['peak_mib']:6.2f}x")


if __name__ == "__main__":
    main()
