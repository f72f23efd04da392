"""Throughput and peak memory of scoring a video with an HPS-sized reward (random weights).

    python tests/benchmarks/bench_scoring.py [--size vit-h|vit-b] [--frames 49] [--height 480 --width 832]

Modes, each in a fresh process so peak memory is its own:
  baseline   the official scorer's way: each frame preprocessed and scored alone, no gradients
  inference  ours: frames preprocessed and scored in micro-batches, no gradients
  train      ours with gradients to the pixels (backward included)
  train+ckpt the same with activation checkpointing of the vision tower
Prints frames/s and peak memory per mode and each mode's speed as a ratio to the baseline.
Peak memory is CUDA max allocated on a GPU, process peak RSS on the CPU. `--size vit-b` is a smaller
stand-in (ViT-B/16 widths) that finishes on a CPU; the README's figures say which size they used.
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


SIZES = {  # (vision width, vision layers, text width, text layers, projection)
    "vit-h": (1280, 32, 1024, 24, 1024),
    "vit-b": (800, 12, 512, 12, 512),
}


def build(size: str, device: torch.device, dtype: torch.dtype, micro_batch: int):
    from transformers import CLIPConfig, CLIPModel

    from video_reward_lora.reward.clip_arch import TEXT_HEAD_WIDTH, VISION_HEAD_WIDTH, load_tokenizer
    from video_reward_lora.reward.clip_similarity import ClipSimilarityReward
    from video_reward_lora.reward.preprocess import Preprocess
    from video_reward_lora.reward.tiny import write_clip_tokenizer

    vw, vl, tw, tl, proj = SIZES[size]
    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    write_clip_tokenizer(folder)
    tokenizer = load_tokenizer(folder)
    config = CLIPConfig(
        text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_attention_heads=tw // TEXT_HEAD_WIDTH,
                         num_hidden_layers=tl, vocab_size=49408, hidden_act="gelu", projection_dim=proj,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_attention_heads=vw // VISION_HEAD_WIDTH,
                           num_hidden_layers=vl, image_size=224, patch_size=14, hidden_act="gelu", projection_dim=proj),
        projection_dim=proj,
    )
    with torch.device(device):
        clip = CLIPModel(config).to(dtype)
    return ClipSimilarityReward(clip, tokenizer, Preprocess("letterbox", 224), "HPS-sized", False, micro_batch)


def run_mode(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    reward = build(args.size, device, dtype, args.micro_batch)
    frames = torch.rand(args.frames, 3, args.height, args.width, device=device)
    prompt = "a red ball rolling across a sunny field"
    reward.text_features(prompt)
    if args.mode == "train+ckpt":
        reward.set_gradient_checkpointing(True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if args.mode == "baseline":
        with torch.no_grad():
            for frame in frames:
                reward(frame.unsqueeze(0), prompt)
    elif args.mode == "inference":
        with torch.no_grad():
            reward(frames, prompt)
    else:
        pixels = frames.clone().requires_grad_(True)
        reward(pixels, prompt).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seconds = time.perf_counter() - start
    return {"mode": args.mode, "seconds": seconds, "fps": args.frames / seconds, "peak_gib": peak, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="vit-h")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("baseline", "inference", "train", "train+ckpt"):
        command = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    base = results["baseline"]["fps"]
    print(f"{args.frames} frames {args.width}x{args.height}, {args.size}, micro-batch {args.micro_batch}, {results['baseline']['device']}")
    print(f"{'mode':>11} {'s':>8} {'frames/s':>9} {'x baseline':>10} {'peak GiB':>9}")
    for mode, r in results.items():
        print(f"{mode:>11} {r['seconds']:8.2f} {r['fps']:9.2f} {r['fps'] / base:10.2f} {r['peak_gib']:9.2f}")


if __name__ == "__main__":
    main()
