"""The loader's micro_batch reaches the reward model: it alone decides how many frames go through one forward."""
from __future__ import annotations

import pytest
import torch

from video_reward_lora.reward.registry import load_reward
from video_reward_lora.reward.scoring import score_video
from video_reward_lora.reward.tiny import write_reward_models


@pytest.mark.parametrize("key", ["aesthetic_v2"])
def test_micro_batch_sets_the_frames_per_forward(tmp_path, key):
    root = write_reward_models(tmp_path / "reward_models", (key,))
    reward = load_reward(key, [root], micro_batch=10)
    batches: list[int] = []
    score = type(reward).score_pixels

    def counted(self, pixels, text):
        batches.append(pixels.shape[0])
        return score(self, pixels, text)

    frames = torch.rand(12, 3, 32, 32)
    reward.score_pixels = counted.__get__(reward)
    scored = score_video(reward, frames, "a red ball", micro_batch=10)
    assert batches == [10, 2] and len(scored.frame_scores) == 12
    batches.clear()
    default = load_reward(key, [root])
    default.score_pixels = counted.__get__(default)
    expected = score_video(default, frames, "a red ball", micro_batch=10)
    assert batches == [8, 2, 2]  # the scorer's chunks of 10, split again by the model's default of 8 frames per forward
    assert scored.frame_scores == pytest.approx(expected.frame_scores, abs=1e-5)  # the same scores either way


def test_micro_batch_is_checked(tmp_path):
    root = write_reward_models(tmp_path / "reward_models", ("aesthetic_v2",))
    with pytest.raises(ValueError, match="micro_batch \\(frames per forward\\) must be a whole number of at least 1, got 0"):
        load_reward("aesthetic_v2", [root], micro_batch=0)
