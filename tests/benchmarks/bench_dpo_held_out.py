"""Does Diffusion-DPO on built pairs raise the held-out reward, and does the answer hold across tiny models drawn from
different weight seeds? Per family and model seed: the VideoDPO pipeline of `tests/test_dpo_pipeline.py` (a pair job
over `--prompts` prompts x `--videos` videos scored by a tiny Aesthetic v2.5, best against worst; then `--steps` DPO
steps), then `--held-out` held-out prompts sampled at `--seeds` noise seeds each, with the LoRA off (the base model)
and on, from the same noise.

    python tests/benchmarks/bench_dpo_held_out.py [--family cogvideox easyanimate easyanimate-v5.1 wan2.2]
        [--model-seeds 0 1 2] [--steps 40] [--learning-rate 1e-2] [--denoiser-steps 0]

Printed per run: the held-out reward of the base and of the LoRA (mean over prompts and seeds); the gain; the
seed-to-seed spread (the standard deviation, over the noise seeds, of the base model's held-out mean); gain / spread;
the paired t statistic of the per-sample gains and the fraction of samples the LoRA improved; the held-out implicit
accuracy; and, with no DPO at all, the mean gain and the fraction improved when the base samples' latents move
along the training pairs' mean winner − loser difference (`tests/preference_checks.py`: whether the pairs carry a
preference that holds on held-out prompts); why DPO does or does not turn it into better samples: the mean cosine
between the reward's gradient at the base samples and the pairs' mean winner − loser difference ("∇r·Δ", how much of
what the pairs differ in the reward responds to), and the reference's prediction difference against the latent
difference of the training pairs ("ref·Δ": for ε-prediction DPO's first push is minus it, so a negative value sends
samples toward the losers); the process's peak resident memory. Wan2.2 trains its high-noise expert, as the test
does. With `--denoiser-steps N` the EasyAnimate models are first trained for N steps as denoisers of flat-colour
videos (`tests/toy_denoiser.py`), as the test's EasyAnimate is.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_dpo import write_model  # noqa: E402
from preference_checks import (held_out_samples, paired_t, reference_alignment, reward_gradient_alignment,  # noqa: E402
                               shifted_gains)
from toy_denoiser import train_as_denoiser  # noqa: E402

from video_reward_lora.training.scored import ScoredSample  # noqa: E402

FAMILIES = ("cogvideox", "easyanimate", "easyanimate-v5.1", "wan2.2")
REWARD = "aesthetic_v2.5"


def scores(samples: list[tuple[str, ScoredSample]], prompts: int) -> torch.Tensor:
    """The samples' scores, [prompt, seed]."""
    return torch.tensor([made.score for _, made in samples], dtype=torch.float64).view(prompts, -1)


def run(family: str, model_seed: int, args: argparse.Namespace, root: Path) -> dict[str, float]:
    """One pipeline on the tiny model of `family` drawn from `model_seed`; returns its numbers."""
    from video_reward_lora.reward.tiny import write_reward_models
    from video_reward_lora.training.config import TrainConfig
    from video_reward_lora.training.jobs.jobs import create_job
    from video_reward_lora.training.jobs.runner import run_job
    from video_reward_lora.training.lora.adapters import disabled
    from video_reward_lora.training.methods.dpo import DiffusionDPO
    from video_reward_lora.training.preference.config import PairsConfig

    config_family = "easyanimate" if family.startswith("easyanimate") else family
    model = write_model(root, family, model_seed)
    prompts = [f"prompt number {i}" for i in range(args.prompts)]
    held_out = [f"held out prompt {i}" for i in range(args.held_out)]
    if config_family == "easyanimate" and args.denoiser_steps:
        train_as_denoiser(Path(model["folder"]), [*prompts, *held_out, ""], args.denoiser_steps, seed=model_seed)
    common = dict(family=config_family, model=model, rewards=[{"key": REWARD}],
                  reward_roots=[str(write_reward_models(root / "rewards", (REWARD,)))], height=32, width=32, frames=9,
                  steps=4, guidance=3.0)
    pairs = PairsConfig.from_dict({**common, "dataset": str(root / "pairs"), "videos_per_prompt": args.videos,
                                   "prompts": prompts, "pair_rule": "best_vs_worst"})
    if run_job(create_job(root / "jobs", pairs).path) != "finished":
        raise RuntimeError(f"{family}: the pair job failed")
    expert = {"expert": "high"} if family == "wan2.2" else {}
    config = TrainConfig.from_dict({
        **common, **expert, "method": "dpo", "dataset": str(root / "pairs"), "validation_pairs": 4,
        "validation_prompts": held_out, "rank": 4, "alpha": 4.0, "learning_rate": args.learning_rate,
        "max_steps": args.steps, "batch_size": 4, "beta": args.beta, "gradient_checkpointing": False})
    engine = DiffusionDPO.for_job(config, torch.float32, torch.device("cpu"))
    for _ in range(args.steps):
        engine.train_step()
    with disabled(engine.transformer):
        base_samples = held_out_samples(engine, held_out, args.seeds)
        shifted = shifted_gains(engine, base_samples)
        gradient, reference = reward_gradient_alignment(engine, base_samples), reference_alignment(engine)
    lora_samples = held_out_samples(engine, held_out, args.seeds)
    base, lora = scores(base_samples, len(held_out)), scores(lora_samples, len(held_out))
    gains = (lora - base).flatten()
    spread = statistics.stdev(base.mean(dim=0).tolist())
    return {"base": base.mean().item(), "lora": lora.mean().item(), "gain": gains.mean().item(), "spread": spread,
            "gain/spread": gains.mean().item() / spread, "t": paired_t(gains),
            "improved": (gains > 0).double().mean().item(), "accuracy": engine.evaluate([]),
            "shifted": shifted.mean().item(), "shifted improved": (shifted > 0).double().mean().item(),
            "gradient": gradient, "reference": reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--model-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--denoiser-steps", type=int, default=0,
                        help="train the EasyAnimate models this many steps as denoisers of flat-colour videos first")
    args = parser.parse_args()
    from video_reward_lora.reward.quiet import quiet_libraries

    quiet_libraries()
    print(f"{'family':<17} {'model seed':>10} {'base':>9} {'LoRA':>9} {'gain':>10} {'spread':>9} {'gain/spread':>11} "
          f"{'paired t':>8} {'improved':>8} {'accuracy':>8} {'shifted':>9} {'improved':>8} {'∇r·Δ':>6} {'ref·Δ':>6} {'s':>5} "
          f"{'peak MiB':>8}", flush=True)
    for family in args.family:
        for model_seed in args.model_seeds:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                r = run(family, model_seed, args, Path(folder))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{family:<17} {model_seed:>10} {r['base']:>9.5f} {r['lora']:>9.5f} {r['gain']:>10.6f} {r['spread']:>9.6f} "
                  f"{r['gain/spread']:>11.1f} {r['t']:>8.1f} {r['improved']:>8.2f} {r['accuracy']:>8.3f} {r['shifted']:>9.6f} "
                  f"{r['shifted improved']:>8.2f} {r['gradient']:>6.3f} {r['reference']:>6.3f} "
                  f"{time.perf_counter() - started:>5.0f} {peak:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
