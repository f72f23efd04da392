"""Per family: time and peak memory of one Diffusion-DPO training step against one reward-backpropagation training step,
same family, size, rank and batch size (1), same run; prints the ratios DPO / reward backprop.

    python tests/benchmarks/bench_dpo.py [--family cogvideox easyanimate wan2.2] [--steps 10] [--repeats 3]

Both methods train the same LoRA on the pack's tiny published-format models (CPU, float32) at bench_training's small
size, gradient checkpointing off. What one step does:

- reward backprop: samples every one of the `--steps` denoising steps (a batch of 2: the prompt and the negative, for
  guidance), all under no_grad but the last, which keeps the graph; decodes the first latent with the VAE, scores the
  frames with a tiny reward model (aesthetic v2.5), and backpropagates through the reward, the decode and the last
  transformer pass.
- DPO: reads the winner's and the loser's stored latents (no VAE encode: the dataset keeps latents of the family's
  `latent_shape`), noises both with one noise at one timestep, and runs the batch of winner + loser through the
  transformer twice: once with the LoRA on (kept for the backward) and once with it off under no_grad (the reference);
  one backward through the LoRA-on pass.

So DPO's time is about three transformer passes at batch 2 (two forward, one backward) against the backprop's `--steps`
forward passes plus a backward, a VAE decode and a reward; its memory holds one transformer graph and no VAE or reward
graph. Each (family, method) runs in a fresh process; the peak resident memory is reset after the warm-up step (glibc's
malloc_trim, then /proc/self/clear_refs; Linux), so "peak MiB" is the process's peak over the timed steps (models,
optimizer state and activations) and "step MiB" that peak less the resident memory before the steps (what a step
adds). s/step is the median of `--repeats` steps' time (Engine.train_step's "time") after one warm-up step.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import torch

from bench_training import SMALL

FAMILIES = ("cogvideox", "easyanimate", "wan2.2")
METHODS = ("reward_backprop", "dpo")
PROMPTS = ["a red ball", "a cat"]
PAIRS = 2


def write_model(root: Path, family: str, seed: int = 0) -> dict[str, str]:
    """The family's tiny published-format model (weights drawn from `seed`) under `root`, as the config's `model`
    setting; "easyanimate-v5.1" is EasyAnimate V5.1 (flow matching), which the config calls "easyanimate"."""
    from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate, write_easyanimate_v51
    from video_reward_lora.training.families.tiny_wan import write_wan22

    if family == "wan2.2":
        return {role: str(path) for role, path in write_wan22(root / "wan", seed=seed).items()}
    writers = {"cogvideox": write_cogvideox_fun, "easyanimate": write_easyanimate, "easyanimate-v5.1": write_easyanimate_v51}
    return {"folder": str(writers[family](root / family, seed=seed))}


def write_pairs(folder: Path, family: str, latent_shape: tuple[int, ...]) -> None:
    """A DPO dataset of `PAIRS` pairs, one per prompt, with random clips and stored latents of `latent_shape`."""
    from video_reward_lora.training.preference.dataset import DatasetInfo, NewClip, write_dataset
    from video_reward_lora.training.preference.pairs import ScoredPair

    generator = torch.Generator().manual_seed(0)
    frames, height, width = SMALL["frames"], SMALL["height"], SMALL["width"]
    clips = [NewClip(torch.rand(frames, 3, height, width, generator=generator), PROMPTS[i // 2 % len(PROMPTS)],
                     torch.randn(latent_shape, generator=generator)) for i in range(2 * PAIRS)]
    info = DatasetInfo(family=family, frames=frames, height=height, width=width, fps=8.0)
    write_dataset(folder, info, clips, [ScoredPair(2 * i, 2 * i + 1, 1.0) for i in range(PAIRS)])


def write_configs(root: Path, family: str, steps: int) -> dict[str, Path]:
    """One config file per method for `family`, sharing the model, size, rank and batch size; returns them by method."""
    from video_reward_lora.reward.files import write_text_atomic
    from video_reward_lora.reward.tiny import write_reward_models
    from video_reward_lora.training.build import load_family
    from video_reward_lora.training.config import TrainConfig

    shared = dict(family=family, model=write_model(root, family), batch_size=1, **SMALL)
    backprop = TrainConfig.from_dict({**shared, "rewards": [{"key": "aesthetic_v2.5"}], "prompts": PROMPTS, "steps": steps,
                                      "reward_roots": [str(write_reward_models(root / "rewards", ("aesthetic_v2.5",)))]})
    model = load_family(backprop, torch.float32, torch.device("cpu"))
    write_pairs(root / "pairs", family, model.latent_shape(1, SMALL["frames"], SMALL["height"], SMALL["width"])[1:])
    configs = {"reward_backprop": backprop, "dpo": TrainConfig.from_dict({**shared, "method": "dpo", "dataset": str(root / "pairs")})}
    paths = {method: root / f"{method}.json" for method in configs}
    for method, config in configs.items():
        write_text_atomic(paths[method], config.to_json())
    return paths


def peak_rss_mib() -> float:
    """The process's peak resident memory since start or the last `reset_peak_rss` (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Hand the heap's free pages back to the system (glibc) and set the process's peak resident memory to its current
    resident memory (Linux 4.0+), so that the peak from here on counts only what is live now and what comes after."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as control:
        control.write("5")


def measure(config_path: Path, repeats: int) -> dict[str, float]:
    """Median step time, peak RSS over the timed steps and its growth over the RSS before them, for one config."""
    from video_reward_lora.training.config import TrainConfig
    from video_reward_lora.training.methods.dpo import DiffusionDPO
    from video_reward_lora.training.methods.reward_backprop import RewardBackprop

    config = TrainConfig.load(config_path)
    trainer_class = DiffusionDPO if config.method == "dpo" else RewardBackprop
    trainer = trainer_class.for_job(config, torch.float32, torch.device("cpu"), None)
    trainer.train_step()  # warm-up: also allocates the optimizer state
    reset_peak_rss()
    before = psutil.Process().memory_info().rss / 2**20
    times = [trainer.train_step()["time"] for _ in range(repeats)]
    peak = peak_rss_mib()
    return {"seconds": statistics.median(times), "peak_mib": peak, "step_mib": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per reward-backprop sample")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps (after one warm-up step)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats)))
        return
    print(f"CPU, {torch.get_num_threads()} threads; {SMALL['frames']} frames {SMALL['width']}x{SMALL['height']}, rank "
          f"{SMALL['rank']}, batch 1, no gradient checkpointing; reward backprop: {args.steps} denoising steps, gradient "
          f"through the last, first latent decoded; median of {args.repeats} steps; peak process RSS over the timed steps")
    print(f"{'family':<12} {'method':<16} {'s/step':>8} {'peak MiB':>9} {'step MiB':>9}")
    for family in args.family:
        with tempfile.TemporaryDirectory() as root:
            configs = write_configs(Path(root), family, args.steps)
            result = {}
            for method in METHODS:
                out = subprocess.run([sys.executable, __file__, "--child", str(configs[method]), "--repeats", str(args.repeats)],
                                     capture_output=True, text=True, check=True)
                result[method] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{family:<12} {method:<16} {result[method]['seconds']:8.3f} {result[method]['peak_mib']:9.0f} "
                      f"{result[method]['step_mib']:9.0f}", flush=True)
        dpo, backprop = result["dpo"], result["reward_backprop"]
        ratios = [dpo[key] / backprop[key] for key in ("seconds", "peak_mib", "step_mib")]
        print(f"{family:<12} {'DPO / backprop':<16} {ratios[0]:7.2f}x {ratios[1]:8.2f}x {ratios[2]:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
