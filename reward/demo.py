"""The pack's main job on an embedded default: score a generated clip with rewards built at run time.

    python -m video_reward_lora.reward.demo [--output demo_output]

Tiny HPS v2.1 and aesthetic v2.5 models are written (seeded) in their official file formats under
`<output>/models/reward_models` and loaded through the real loaders; a 16-frame clip is drawn, scored per frame
by each reward and by their normalised mix, and the scores are printed and plotted to `<output>/scores.png`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .composite import CompositeReward, RewardTerm
from .plot import frame_grid, line_chart, save_png
from .quiet import quiet_libraries
from .registry import load_reward
from .scoring import score_video
from .tiny import write_reward_models

PROMPT = "a red ball rolling across a sunny field at dusk"


def generated_clip(frames: int = 16, height: int = 256, width: int = 448) -> torch.Tensor:
    """A sky-to-grass gradient with a ball crossing it while the light fades: `[F,3,H,W]` in 0..1."""
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    clip = []
    for t in torch.linspace(0, 1, frames):
        light = 1.0 - 0.6 * t
        sky = torch.stack([0.4 + 0.5 * y, 0.6 + 0.2 * y, 0.9 - 0.3 * y]).expand(3, height, width)
        grass = torch.tensor([0.2, 0.6, 0.15]).view(3, 1, 1).expand(3, height, width)
        frame = torch.where(y.expand(height, width) > 0.6, grass, sky) * light
        cx, cy = 0.1 + 0.8 * t, 0.55
        ball = ((x - cx) ** 2 * (width / height) ** 2 + (y - cy) ** 2) < 0.01
        frame = torch.where(ball, torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1) * light, frame)
        clip.append(frame)
    return torch.stack(clip).clamp(0, 1)


def run(output: Path) -> dict[str, list[float]]:
    started = time.perf_counter()
    root = write_reward_models(output / "models" / "reward_models", ("hps_v2.1", "aesthetic_v2.5"))
    print(f"built tiny reward models (random weights, seed 0) in {root}")
    hps, aesthetic = load_reward("hps_v2.1", [root]), load_reward("aesthetic_v2.5", [root])
    mix = CompositeReward([RewardTerm(m, 1.0, *m.spec.norm) for m in (hps, aesthetic)])
    clip = generated_clip()
    print(f"clip: {clip.shape[0]} frames of {clip.shape[3]}x{clip.shape[2]}; prompt: {PROMPT!r}")

    series: dict[str, list[float]] = {}
    for name, reward in (("HPS v2.1", hps), ("Aesthetic v2.5", aesthetic), ("mix (normalised)", mix)):
        result = score_video(reward, clip, PROMPT)
        series[name] = result.frame_scores
        print(f"{name:>18}: video score {result.score:.5f}")

    print("\nframe " + " ".join(f"{name:>18}" for name in series))
    for i in range(clip.shape[0]):
        print(f"{i:5d} " + " ".join(f"{values[i]:18.5f}" for values in series.values()))

    frames = clip.clone().requires_grad_(True)
    hps(frames, PROMPT).mean().backward()
    print(f"\ngradient of the HPS score reaches the pixels: mean |d score / d pixel| = {frames.grad.abs().mean():.3e}")

    output.mkdir(parents=True, exist_ok=True)
    normalised = {"HPS v2.1": [(v - hps.spec.norm[0]) / hps.spec.norm[1] for v in series["HPS v2.1"]]}
    normalised["Aesthetic v2.5"] = [(v - aesthetic.spec.norm[0]) / aesthetic.spec.norm[1] for v in series["Aesthetic v2.5"]]
    normalised["mix"] = series["mix (normalised)"]
    save_png(line_chart(normalised, title="per-frame scores on one scale", y_label="(score − mean) / std"),
             output / "scores.png")
    pixels = (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    save_png(frame_grid(pixels, [f"frame {i}" for i in range(len(pixels))], columns=4), output / "clip.png")
    print(f"plot: {output / 'scores.png'}  frames: {output / 'clip.png'}  ({time.perf_counter() - started:.1f} s)")
    return series


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where models and plots are written")
    args = parser.parse_args(argv)
    quiet_libraries()
    run(args.output)


if __name__ == "__main__":
    main()
