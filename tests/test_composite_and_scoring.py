"""Frame selection, loss forms, composite rewards, video scoring and ranking, file handling."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from video_reward_lora.reward.composite import CompositeReward, RewardTerm, reward_loss, select_frames
from video_reward_lora.reward.files import ModelFileError, list_entries, resolve_inside, write_safetensors_atomic
from video_reward_lora.reward.plot import line_chart
from video_reward_lora.reward.scoring import compare_videos, rank_videos, score_video, split_videos
from video_reward_lora.reward.temporal import Dynamism


class Brightness(nn.Module):
    """A stand-in reward: mean brightness of each frame times a factor."""

    def __init__(self, factor: float = 1.0, label: str = "brightness") -> None:
        super().__init__()
        self.factor, self.label, self.calls = factor, label, []

    def forward(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        self.calls.append(frames.shape[0])
        return frames.mean(dim=(1, 2, 3)) * self.factor


def test_select_frames():
    assert select_frames(5, "all") == [0, 1, 2, 3, 4]
    assert select_frames(5, "first") == [0]
    assert select_frames(49, "evenly", 4) == [0, 16, 32, 48]
    assert select_frames(3, "evenly", 10) == [0, 1, 2]
    picked = select_frames(49, "random", 5, seed=3)
    assert picked == select_frames(49, "random", 5, seed=3) and len(set(picked)) == 5 and picked == sorted(picked)
    assert picked != select_frames(49, "random", 5, seed=4)
    with pytest.raises(ValueError, match="at least 1"):
        select_frames(5, "evenly", 0)
    with pytest.raises(ValueError, match="unknown frame selection"):
        select_frames(5, "middle")


def test_loss_forms():
    rewards = torch.tensor([0.2, 0.4])
    assert reward_loss(rewards, "negative", scale=2.0).item() == pytest.approx(-0.6)
    assert reward_loss(rewards, "target", target=1.0, scale=0.5).item() == pytest.approx(0.35)
    with pytest.raises(ValueError, match="unknown loss form"):
        reward_loss(rewards, "hinge")


def test_composite_is_weighted_sum_of_normalised_scores():
    frames = torch.full((2, 3, 4, 4), 0.5)
    frames[1] = 0.25
    mix = CompositeReward([RewardTerm(Brightness(1.0, "a"), 2.0, 0.5, 0.25), RewardTerm(Brightness(10.0, "b"), -1.0, 3.0, 2.0)])
    expected = 2.0 * (frames.mean((1, 2, 3)) - 0.5) / 0.25 - 1.0 * (10 * frames.mean((1, 2, 3)) - 3.0) / 2.0
    assert torch.allclose(mix(frames, ""), expected)
    assert mix.label == "2*a + -1*b"
    with pytest.raises(ValueError, match="std must be positive"):
        CompositeReward([RewardTerm(Brightness(), std=0.0)])


def test_score_video_micro_batches_and_reports_progress():
    frames = torch.linspace(0, 1, 7).view(7, 1, 1, 1).expand(7, 3, 2, 2)
    reward, done = Brightness(), []
    result = score_video(reward, frames, "", "all", micro_batch=3, progress=done.append)
    assert reward.calls == [3, 3, 1] and done == [3, 3, 1]
    assert result.frame_scores == pytest.approx(torch.linspace(0, 1, 7).tolist())
    assert result.score == pytest.approx(0.5)
    assert "video score: 0.5" in result.describe()
    assert score_video(reward, frames, "", "evenly", count=3).frame_indices == [0, 3, 6]


def test_compare_videos_scores_every_reward_of_a_mix():
    """A frame reward and Dynamism on a still clip (A) and a clip whose colour changes (B): each reward's raw score
    (the frame reward's mean over the chosen frames 0, 2, 4; Dynamism's over the whole clip) and the mix's."""
    still = torch.full((5, 3, 4, 4), 0.5)
    changing = still.clone()
    changing[3:, 0] = 0.9  # the red channel jumps between frames 2 and 3
    brightness = Brightness(2.0, "brightness")
    mix = CompositeReward([RewardTerm(brightness, 1.0, 0.5, 0.25), RewardTerm(Dynamism("Dynamism"), 2.0, 0.004, 0.004)])
    result = compare_videos(mix, still, changing, "", "evenly", 3, micro_batch=2)
    assert brightness.calls == [3, 3]  # with a clip reward in the mix, one call per video on the chosen frames
    bright_a, bright_b = 2 * 0.5, 2 * (0.5 + 0.5 + (0.9 + 0.5 + 0.5) / 3) / 3
    dynamism_a, dynamism_b = 0.0, 0.4**2 / 3 / 4  # one jump of 0.4 in 1 of 3 channels, over 4 frame pairs
    rows = [(r.label, r.a, r.b) for r in result.rewards]
    assert [label for label, *_ in rows] == ["brightness", "Dynamism"]
    assert rows[0][1:] == pytest.approx((bright_a, bright_b), abs=1e-6)
    assert rows[1][1:] == pytest.approx((dynamism_a, dynamism_b), abs=1e-6)
    mix_a, mix_b = ((b - 0.5) / 0.25 + 2 * (d - 0.004) / 0.004 for b, d in ((bright_a, dynamism_a), (bright_b, dynamism_b)))
    assert (result.mix.a, result.mix.b) == pytest.approx((mix_a, mix_b), rel=1e-6, abs=1e-6)  # float32 / 0.004
    assert result.total == result.mix and result.mix.a == pytest.approx(score_video(mix, still, "", "evenly", 3).score)
    table = [[cell.strip() for cell in line.split(" | ")] for line in result.describe("base", "LoRA").splitlines()]
    assert [line[0] for line in table] == ["reward", "brightness", "Dynamism", "mix (1*brightness + 2*Dynamism)"]
    assert table[0][1:] == ["base", "LoRA", "LoRA − base"] and table[2][1:] == ["0", f"{dynamism_b:.6g}", f"{dynamism_b:+.6g}"]

    single = compare_videos(Brightness(), still, changing, "", "all", micro_batch=2)
    assert single.mix is None and single.total == single.rewards[0] and len(single.describe().splitlines()) == 2
    assert (single.total.a, single.total.b) == pytest.approx((0.5, 0.5 + 0.4 / 3 * 2 / 5), abs=1e-6)


def test_rank_and_split():
    videos = [torch.full((4, 3, 2, 2), v) for v in (0.2, 0.9, 0.5)]
    ranked = rank_videos(Brightness(), videos, "")
    assert [i for i, _ in ranked] == [1, 2, 0]
    batch = torch.cat(videos)
    assert [v.shape[0] for v in split_videos(batch, 4)] == [4, 4, 4]
    with pytest.raises(ValueError, match="do not divide"):
        split_videos(batch, 5)
    with pytest.raises(ValueError, match="no videos"):
        rank_videos(Brightness(), [], "")


def test_files(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "Folder").mkdir()
    assert list_entries([tmp_path, tmp_path / "missing"]) == ["a.pt", "Folder"]
    assert resolve_inside([tmp_path], "a.pt") == tmp_path / "a.pt"
    assert resolve_inside([tmp_path], "absent.pt") is None
    with pytest.raises(ModelFileError):
        resolve_inside([tmp_path], "Folder/../../x")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.safetensors"
    with pytest.raises(Exception):
        write_safetensors_atomic({"bad": "not a tensor"}, target)
    assert list(tmp_path.iterdir()) == []
    write_safetensors_atomic({"w": torch.ones(2)}, target, {"k": "v"})
    assert target.exists() and [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_line_chart_draws_series():
    image = line_chart({"a": [1.0, 2.0, 3.0], "b": [3.0, 2.0, float("nan")]}, title="t", size=(640, 360))
    assert image.shape == (360, 640, 3) and image.dtype.name == "uint8"
    blue, orange = (image == (31, 119, 180)).all(-1).sum(), (image == (255, 127, 14)).all(-1).sum()
    assert blue > 100 and orange > 50
