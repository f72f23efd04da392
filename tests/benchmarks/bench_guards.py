"""What each guard against reward hacking costs: time and peak memory of one reward-backprop training step (and of
one evaluation, for the judge and diversity) against the unguarded run, same config, each in a fresh process.

    python tests/benchmarks/bench_guards.py [--steps 4] [--family cogvideox]

Tiny published-format models on the CPU (the guards' cost relative to a step is what carries over: the drift penalty
adds one transformer forward per step with gradients, the dynamism guard one sampling pass without gradients and a
decode, the judge one whole sample, decode and score per validation prompt per evaluation, diversity
`diversity_seeds` first-frame samples per prompt). Memory is the peak RSS growth of the process over the timed part.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GUARDS = {
    "none": {},
    "drift": {"drift_weight": 1e-3},
    "dynamism": {"dynamism_weight": 1.0},
    "judge": {"judge": [{"key": "hps_v2.1"}]},
    "judge + diversity": {"judge": [{"key": "hps_v2.1"}], "diversity_seeds": 2},
}
SETTINGS = dict(rewards=[{"key": "aesthetic_v2.5"}], prompts=["a red ball", "a blue sky"], validation_prompts=["a sunny field"],
                height=32, width=32, frames=9, steps=4, rank=4, alpha=4.0, decoded_latents=2, gradient_checkpointing=False,
                max_steps=100, validation_every=1000)


def child(config_path: Path, steps: int) -> None:
    """Time `steps` training steps (after one warm-up) and one evaluation; print JSON."""
    import psutil
    import torch

    from video_reward_lora.training.config import TrainConfig
    from video_reward_lora.training.methods.reward_backprop import RewardBackprop

    config = TrainConfig.load(config_path)
    trainer = RewardBackprop.for_job(config, torch.float32, torch.device("cpu"), None)
    trainer.train_step()
    before = psutil.Process().memory_info().rss
    times = [trainer.train_step()["time"] for _ in range(steps)]
    peak = max(psutil.Process().memory_info().rss, before)
    started = time.perf_counter()
    trainer.judged()
    evaluation = time.perf_counter() - started
    print(json.dumps({"step_s": statistics.median(times), "growth_mib": (peak - before) / 2**20,
                      "rss_mib": peak / 2**20, "evaluation_s": evaluation}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--family", default="cogvideox", choices=("cogvideox", "easyanimate"))
    parser.add_argument("--child", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)
    from video_reward_lora.reward.tiny import write_reward_models
    from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        writer = write_cogvideox_fun if args.family == "cogvideox" else write_easyanimate
        model = writer(root / "model")
        rewards = write_reward_models(root / "rewards", ("aesthetic_v2.5", "hps_v2.1"))
        rows = {}
        for name, guard in GUARDS.items():
            config = root / f"{name.replace(' ', '_')}.json"
            config.write_text(json.dumps({"family": args.family, "model": {"folder": str(model)},
                                          "reward_roots": [str(rewards)], **SETTINGS, **guard}))
            done = subprocess.run([sys.executable, __file__, "--child", str(config), "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=True)
            rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows["none"]
    print(f"{args.family}, 32x32x9, 4 sampling steps, 2 latents decoded, rank 4, CPU; median of {args.steps} steps")
    print(f"{'guard':20} {'s/step':>8} {'x none':>7} {'MiB grown':>10} {'RSS MiB':>8} {'eval s':>7}")
    for name, row in rows.items():
        print(f"{name:20} {row['step_s']:8.3f} {row['step_s'] / base['step_s']:6.2f}x {row['growth_mib']:10.1f} "
              f"{row['rss_mib']:8.0f} {row['evaluation_s'] if name.startswith('judge') else float('nan'):7.2f}")


if __name__ == "__main__":
    main()
