"""Seeds derived from a user's seed and a tuple of small integers (a use, a training step, a micro-batch, a process),
through numpy's SeedSequence: every seed in ComfyUI's range 0..2^64-1 with any tuple gives a 64-bit seed for a
`torch.Generator` without overflow, the same arguments give the same seed, and distinct tuples give independent ones."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**64 - 1  # ComfyUI's seed widgets go this far


def check_seed(seed: int, name: str = "seed") -> int:
    """`seed` when it is an integer in 0..2^64-1; else a ValueError naming `name`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2^64-1 ({MAX_SEED}, ComfyUI's seed range), got {seed!r}")
    return seed


def derive_seed(seed: int, *keys: int) -> int:
    """The 64-bit seed of the stream that `keys` (non-negative integers) name under `seed`."""
    import numpy as np

    sequence = np.random.SeedSequence(check_seed(seed), spawn_key=keys)
    return int(sequence.generate_state(1, np.uint64)[0])


def seeded_generator(seed: int, *keys: int) -> "torch.Generator":
    """A CPU `torch.Generator` seeded with `derive_seed(seed, *keys)`."""
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, *keys))
