"""Time and peak memory of merging a rank-128 reward LoRA into Wan-14B-sized blocks (random bf16 weights).

    python tests/benchmarks/bench_lora_merge.py [--blocks 4] [--device cpu|cuda]

A Wan2.2 A14B block has eight 5120x5120 attention Linears that the reward LoRAs touch (ffn is skipped); the
model has 40 blocks. The script merges `--blocks` blocks with the pack's `merged()` (float32 merge, cast back),
extrapolates to 40 blocks, and compares with the memory-bandwidth floor: the time to read and write those
weights once at the copy bandwidth measured in the same run. Prints the ratio and the peak memory.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from video_reward_lora.training.lora.formats import LoraModule
from video_reward_lora.training.lora.merge import merged

DIM, RANK, ALPHA, BLOCKS_IN_MODEL, LINEARS_PER_BLOCK = 5120, 128, 64.0, 40, 8


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    weights = [torch.randn(DIM, DIM, device=device).to(torch.bfloat16) for _ in range(args.blocks * LINEARS_PER_BLOCK)]
    modules = [LoraModule(torch.randn(RANK, DIM, device=device).to(torch.bfloat16) * 0.01,
                          torch.randn(DIM, RANK, device=device).to(torch.bfloat16) * 0.01, ALPHA) for _ in range(LINEARS_PER_BLOCK)]

    source = torch.empty(2**28, dtype=torch.bfloat16, device=device).normal_()
    target = torch.empty_like(source)
    target.copy_(source)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        target.copy_(source)
    sync(device)
    bandwidth = 3 * 2 * source.numel() * source.element_size() / (time.perf_counter() - start)  # read + write bytes/s
    del source, target
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    sync(device)
    start = time.perf_counter()
    for i, weight in enumerate(weights):
        weights[i] = merged(weight, modules[i % LINEARS_PER_BLOCK], 0.7).to(weight.dtype)
    sync(device)
    seconds = time.perf_counter() - start

    per_block = seconds / args.blocks
    bytes_per_block = LINEARS_PER_BLOCK * DIM * DIM * 2 * 2  # read and write bf16 weights
    floor_per_block = bytes_per_block / bandwidth
    print(f"device {device}; {args.blocks} Wan-14B blocks merged ({LINEARS_PER_BLOCK} x {DIM}x{DIM} bf16 each, rank {RANK})")
    print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s")
    print(f"merge: {per_block * 1000:.0f} ms/block, 40 blocks ~ {per_block * BLOCKS_IN_MODEL:.1f} s")
    print(f"bandwidth floor: {floor_per_block * 1000:.0f} ms/block, 40 blocks ~ {floor_per_block * BLOCKS_IN_MODEL:.1f} s")
    print(f"ratio to floor: {per_block / floor_per_block:.1f}x; peak memory {peak_gib(device):.2f} GiB "
          f"(weights alone {len(weights) * DIM * DIM * 2 / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
