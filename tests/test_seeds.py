"""Seeds derived for every random draw (reward.seeds): the whole 0..2^64-1 range, distinct streams for distinct
tuples, the same draws for the same tuple, and clear errors for seeds outside the range."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from video_reward_lora.reward.composite import select_frames
from video_reward_lora.reward.seeds import MAX_SEED, derive_seed, seeded_generator
from video_reward_lora.training.engine.engine import step_generator
from video_reward_lora.training.engine.engine import held_out_generator
from video_reward_lora.training.config import TrainConfig

# 181_011_380 is the first seed the former formula ((seed*1_000_003 + step)*1_009 + micro)*101 + rank overflowed at
SEEDS = (0, 181_011_380, 2**63, MAX_SEED)


def _draw(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(8, generator=generator)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_seed_derives_distinct_repeatable_streams(seed):
    tuples = list(itertools.product(range(3), range(2), range(2)))  # (step, micro-batch, process)
    draws = {t: _draw(step_generator(seed, *t)) for t in tuples}
    held_out = [_draw(held_out_generator(seed, index)) for index in range(3)]
    everything = [*draws.values(), *held_out]
    assert len({tuple(d.tolist()) for d in everything}) == len(everything) == 15  # no two streams alike
    for t, draw in draws.items():  # the same tuple gives bit-identical draws
        assert torch.equal(_draw(step_generator(seed, *t)), draw)
    assert torch.equal(_draw(held_out_generator(seed, 2)), held_out[2])
    assert 0 <= derive_seed(seed, 0, 5, 1, 1) <= MAX_SEED


def test_derived_seed_is_numpys_spawned_sequence():
    """A key tuple (k,) names numpy's k-th spawned child of SeedSequence(seed), computed here through `spawn`."""
    for seed in SEEDS:
        children = np.random.SeedSequence(seed).spawn(4)
        assert [derive_seed(seed, k) for k in range(4)] == [int(c.generate_state(1, np.uint64)[0]) for c in children]


def test_frame_selection_takes_any_seed():
    picks = {seed: select_frames(49, "random", 5, seed) for seed in SEEDS}
    for seed, picked in picks.items():
        assert picked == select_frames(49, "random", 5, seed) and len(set(picked)) == 5 and picked == sorted(picked)
    assert len({tuple(p) for p in picks.values()}) == len(SEEDS)
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(ValueError, match="seed must be an integer from 0 to 2\\^64-1"):
            select_frames(49, "random", 5, bad)
    assert torch.equal(_draw(seeded_generator(7)), _draw(seeded_generator(7)))


def test_config_accepts_comfyuis_seed_range_only():
    base = {"family": "cogvideox", "model": {"folder": "x"}, "prompts": ["a cat"], "height": 32, "width": 32, "frames": 9}
    assert TrainConfig.from_dict({**base, "seed": MAX_SEED}).seed == MAX_SEED
    for bad in (-1, 2**64, 2**70):
        with pytest.raises(ValueError, match=f"seed must be an integer from 0 to 2\\^64-1 .*got {bad}"):
            TrainConfig.from_dict({**base, "seed": bad})
