"""Which denoising steps carry gradients (indices into the sampler's steps, 0 = the noisiest).

- `last`: the final step (DRaFT-1, the seeds' default).
- `tail`: the last K steps (DRaFT-K).
- `uniform`: K steps spaced N//K apart from a random start (VideoX-Fun "uniform").
- `random`: K distinct steps drawn from [random_start, random_end).
- `list`: exactly the given steps.
- `cutoff`: VADER's random cut-off: every step from a uniformly drawn index to the end.
For Wan2.2 the indices count only the steps of the expert being trained (VideoX-Fun's rule).
"""
from __future__ import annotations

import torch

STRATEGIES = ("last", "tail", "uniform", "random", "list", "cutoff")


def grad_steps(
    strategy: str,
    steps: int,
    k: int = 1,
    generator: torch.Generator | None = None,
    random_start: int = 0,
    random_end: int | None = None,
    step_list: list[int] | None = None,
) -> list[int]:
    """Sorted step indices in `range(steps)` that keep gradients for one training step."""
    if steps < 1:
        raise ValueError("there are no steps to choose from")
    k = min(k, steps)
    if strategy == "last":
        return [steps - 1]
    if strategy == "tail":
        return list(range(steps - k, steps))
    if strategy == "uniform":
        interval = steps // k
        start = int(torch.randint(0, interval, (1,), generator=generator)) if interval > 1 else 0
        return [start + i * interval for i in range(k)]
    if strategy == "random":
        end = steps if random_end is None else min(random_end, steps)
        if not 0 <= random_start < end:
            raise ValueError(f"the random step range [{random_start}, {end}) is empty for {steps} steps")
        pool = torch.arange(random_start, end)
        return sorted(pool[torch.randperm(len(pool), generator=generator)[:k]].tolist())
    if strategy == "list":
        if not step_list:
            raise ValueError("the 'list' strategy needs a step list")
        bad = [s for s in step_list if not 0 <= s < steps]
        if bad:
            raise ValueError(f"steps {bad} are outside 0..{steps - 1}")
        return sorted(set(step_list))
    if strategy == "cutoff":
        return list(range(int(torch.randint(0, steps, (1,), generator=generator)), steps))
    raise ValueError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")

