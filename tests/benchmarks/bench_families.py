"""Per family: time and peak memory of one denoising step and of a VAE decode of the first latent frame.

    python tests/benchmarks/bench_families.py [--size small|full] [--frames 49 --height 480 --width 720]

`small` builds the pack's tiny published-format models (CPU-friendly); `full` swaps in the full-size transformers
and VAEs (CogVideoX-Fun 2B, EasyAnimate V5 7B, both Wan2.2 A14B experts) with random weights, on the GPU in bf16.
Each step is timed with and without autograd (the training case keeps the graph of one step); the ratio of the two
is printed, plus peak memory.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from video_reward_lora.training.families.cogvideox import CogVideoXFun
from video_reward_lora.training.families.easyanimate import EasyAnimate
from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate
from video_reward_lora.training.families.tiny_wan import write_wan22
from video_reward_lora.training.families.wan import Wan22

from full_size import make_full_size

KEYS = {CogVideoXFun: "cogvideox", EasyAnimate: "easyanimate", Wan22: "wan2.2"}
PROMPTS = ["a red ball", ""]


def peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def family_for(cls, size: str, device: torch.device, dtype: torch.dtype):
    folder = Path(tempfile.mkdtemp())
    if cls is Wan22:
        family = Wan22.load(**write_wan22(folder / "wan"), dtype=dtype, device=device)
    else:
        family = cls.load(write_cogvideox_fun(folder / "cog") if cls is CogVideoXFun else write_easyanimate(folder / "ea"), dtype, device)
    if size == "full":
        make_full_size(family, KEYS[cls], PROMPTS, torch.Generator().manual_seed(0))
    return family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda" if args.size == "full" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"{args.size} models, {args.frames} frames {args.width}x{args.height}, {device}, {dtype}")
    for cls in (CogVideoXFun, EasyAnimate, Wan22):
        family = family_for(cls, args.size, device, dtype)
        latents = family.init_latents(2, args.frames, args.height, args.width, torch.Generator().manual_seed(0))
        text = family.encode(PROMPTS)
        condition = family.conditioning(latents, None)
        t = torch.tensor([500.0], device=device)
        with torch.no_grad():
            family.predict(latents, t, text, condition)
            no_grad = timed(device, lambda: family.predict(latents, t, text, condition))
        lora_like = next(family.transformers[family.expert(t)].parameters())
        lora_like.requires_grad_(True)
        with_grad = timed(device, lambda: family.predict(latents, t, text, condition).float().mean().backward())
        lora_like.requires_grad_(False)
        with torch.no_grad():
            decode = timed(device, lambda: family.decode(latents[:1], first_n=1))
        print(f"{family.name:>14}: step {no_grad * 1000:8.1f} ms no-grad, {with_grad * 1000:8.1f} ms with backward "
              f"({with_grad / no_grad:.1f}x); first-latent decode {decode * 1000:7.1f} ms; peak {peak(device):.2f} GiB")


if __name__ == "__main__":
    main()
