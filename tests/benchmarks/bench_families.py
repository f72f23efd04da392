"""Per family: time and peak memory of one denoising step and of a VAE decode of the first latent frame.

    python tests/benchmarks/bench_families.py [--size small|full] [--frames 49 --height 480 --width 720]

`small` builds the pack's tiny published-format models (CPU-friendly); `full` builds the full-size transformers
(CogVideoX-Fun 2B, EasyAnimate V5 7B) with random weights on the GPU, bf16. Each step is timed with and without
autograd (the training case keeps the graph of one step); the ratio of the two is printed, plus peak memory.
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

FULL = {
    CogVideoXFun: dict(num_attention_heads=30, attention_head_dim=64, in_channels=33, out_channels=16, num_layers=30,
                       text_embed_dim=4096, time_embed_dim=512, use_rotary_positional_embeddings=False),
    EasyAnimate: dict(num_attention_heads=48, attention_head_dim=64, in_channels=33, out_channels=16, patch_size=2,
                      num_layers=36, mmdit_layers=18, text_embed_dim=1024, text_embed_dim_t5=2048, time_embed_dim=512),
}


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
    family = cls.load(write_cogvideox_fun(folder / "cog") if cls is CogVideoXFun else write_easyanimate(folder / "ea"), dtype, device)
    if size == "full":
        from diffusers import CogVideoXTransformer3DModel, EasyAnimateTransformer3DModel

        model_cls = CogVideoXTransformer3DModel if cls is CogVideoXFun else EasyAnimateTransformer3DModel
        with torch.device(device):
            family.transformer = model_cls(**FULL[cls]).to(dtype).eval().requires_grad_(False)
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
    for cls in (CogVideoXFun, EasyAnimate):
        family = family_for(cls, args.size, device, dtype)
        latents = family.init_latents(2, args.frames, args.height, args.width, torch.Generator().manual_seed(0))
        text_width = family.transformer.config.text_embed_dim
        text = family.encode(["a red ball", ""])
        if args.size == "full":  # the tiny text encoders do not match the full-size transformer: random embeddings
            text.tensors = {k: torch.randn(2, v.shape[1], text_width if k == "embeds" else family.transformer.config.text_embed_dim_t5,
                                           device=device, dtype=dtype) for k, v in text.tensors.items()}
        condition = family.conditioning(latents, None)
        t = torch.tensor([500.0], device=device)
        with torch.no_grad():
            family.predict(latents, t, text, condition)
            no_grad = timed(device, lambda: family.predict(latents, t, text, condition))
        lora_like = next(family.transformer.parameters())
        lora_like.requires_grad_(True)
        with_grad = timed(device, lambda: family.predict(latents, t, text, condition).float().mean().backward())
        lora_like.requires_grad_(False)
        with torch.no_grad():
            decode = timed(device, lambda: family.decode(latents[:1], first_n=1))
        print(f"{family.name:>14}: step {no_grad * 1000:8.1f} ms no-grad, {with_grad * 1000:8.1f} ms with backward "
              f"({with_grad / no_grad:.1f}x); first-latent decode {decode * 1000:7.1f} ms; peak {peak(device):.2f} GiB")


if __name__ == "__main__":
    main()
