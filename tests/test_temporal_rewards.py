"""Clip rewards: flicker, dynamism and subject consistency on constructed clips, mixing with frame rewards, loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from video_reward_lora.reward.composite import CompositeReward, RewardTerm, is_clip_reward
from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.reward.registry import REWARDS, load_reward
from video_reward_lora.reward.scoring import score_video
from video_reward_lora.reward.temporal import Dynamism, Flicker
from video_reward_lora.reward.tiny import write_siglip_folder
from video_reward_lora.training.config import TrainConfig


class Brightness(nn.Module):
    """A stand-in frame reward: the mean brightness of each frame."""

    def __init__(self) -> None:
        super().__init__()
        self.label, self.seen = "brightness", []

    def forward(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        self.seen.append(frames.shape[0])
        return frames.mean(dim=(1, 2, 3))


def moving_square(speed: int, frames: int = 6, size: int = 8) -> np.ndarray:
    """A grey square moving right by `speed` pixels per frame over a horizontal gradient, [T,3,32,64]."""
    clip = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32), (frames, 3, 32, 64)).copy()
    for t in range(frames):
        clip[t, :, 10 : 10 + size, 2 + speed * t : 2 + speed * t + size] = 0.7
    return clip


@pytest.fixture(scope="module")
def siglip_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models") / "reward_models"
    write_siglip_folder(root / REWARDS["subject_consistency"].encoder)
    return root


def test_pixel_measures_on_constructed_clips():
    flicker, dynamism = load_reward("flicker", []), load_reward("dynamism", [])
    assert is_clip_reward(flicker) and is_clip_reward(dynamism) and flicker.label == "Flicker"
    static = torch.rand(1, 3, 16, 16).expand(5, 3, 16, 16)
    assert flicker(static).shape == (1,) and dynamism(static).shape == (1,)
    assert flicker(static).item() == 1.0 and dynamism(static).item() == 0.0
    alternating = torch.arange(6).remainder(2).float().view(6, 1, 1, 1).expand(6, 3, 16, 16)
    assert flicker(alternating).item() == 0.0 and dynamism(alternating).item() == 1.0
    fade = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 16, 16)
    assert flicker(fade).item() == pytest.approx(1.0, abs=1e-6)
    assert dynamism(fade).item() == pytest.approx(0.25**2, abs=1e-7)

    slow, fast = moving_square(2), moving_square(4)
    expected_dynamism = np.mean([np.mean((slow[t + 1] - slow[t]) ** 2) for t in range(5)])
    expected_flicker = 1 - np.mean([np.mean(np.abs(slow[t + 1] - (slow[t] + slow[t + 2]) / 2)) for t in range(4)])
    assert dynamism(torch.from_numpy(slow)).item() == pytest.approx(expected_dynamism, abs=1e-6)
    assert flicker(torch.from_numpy(slow)).item() == pytest.approx(expected_flicker, abs=1e-6)
    assert 0 < expected_dynamism < dynamism(torch.from_numpy(fast)).item()


def test_clip_frames_and_too_short_clips():
    clip = torch.rand(7, 3, 8, 8)
    assert torch.equal(Dynamism("d", clip_frames=3)(clip), Dynamism("d")(clip[[0, 3, 6]]))
    with pytest.raises(ValueError, match="at least 3 frames, got 2"):
        Flicker("f")(clip[:2])
    with pytest.raises(ValueError, match="at least 3 frames, clip_frames is 2"):
        Flicker("f", clip_frames=2)
    with pytest.raises(ValueError, match=r"\[F,3,H,W\]"):
        Dynamism("d")(clip[0])


def test_mix_of_frame_and_clip_rewards_is_the_weighted_sum():
    clip = moving_square(3).astype(np.float64)
    brightness = Brightness()
    dynamism = load_reward("dynamism", [])
    mix = CompositeReward([RewardTerm(brightness, 2.0, 0.5, 0.25), RewardTerm(dynamism, -1.5, 0.002, 0.01)])
    assert mix.terms_per_clip() == [False, True]
    clip_part = -1.5 * (np.mean((clip[1:] - clip[:-1]) ** 2) - 0.002) / 0.01

    scores = mix(torch.from_numpy(clip), "")
    assert scores.shape == (6,)
    assert scores.mean().item() == pytest.approx(2.0 * (clip.mean() - 0.5) / 0.25 + clip_part, abs=1e-6)
    picked = mix(torch.from_numpy(clip), "", frame_indices=[0, 5])
    assert brightness.seen == [6, 2] and picked.shape == (2,)
    assert picked.mean().item() == pytest.approx(2.0 * (clip[[0, 5]].mean() - 0.5) / 0.25 + clip_part, abs=1e-6)


def test_subject_consistency_on_tiny_siglip(siglip_root, video):
    from transformers import SiglipVisionModel

    model = load_reward("subject_consistency", [siglip_root])
    assert is_clip_reward(model) and model.clip_frames == 16 and model.label == "Subject consistency"
    assert model(video[:1].expand(4, 3, 96, 160)).item() == pytest.approx(1.0, abs=1e-5)
    score = model(video, "ignored prompt")
    assert score.shape == (1,) and torch.equal(model(video), score) and model.last_sub_scores == {}
    reference = SiglipVisionModel.from_pretrained(str(siglip_root / model.spec.encoder)).eval()
    pixels = F.interpolate(video, size=(384, 384), mode="bicubic", antialias=True).clamp(0, 1) * 2 - 1
    with torch.no_grad():
        embeddings = F.normalize(reference(pixel_values=pixels).pooler_output, dim=-1)
    assert score.item() == pytest.approx(F.cosine_similarity(embeddings[1:], embeddings[:-1]).mean().item(), abs=1e-5)
    assert score.item() < 1 - 1e-4
    model.micro_batch = 4
    assert model(video).item() == pytest.approx(score.item(), abs=1e-6)


@pytest.mark.parametrize("key", ["flicker", "dynamism", "subject_consistency"])
def test_gradients_reach_the_frames(siglip_root, video, key):
    model = load_reward(key, [siglip_root])
    frames = video.clone().requires_grad_(True)
    model(frames).sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


def test_loading_errors(tmp_path):
    missing = "Subject consistency image encoder: 'siglip-so400m-patch14-384' was not found"
    with pytest.raises(ModelFileError, match=missing):
        load_reward("subject_consistency", [tmp_path])
    with pytest.raises(ValueError, match="Flicker: this reward uses no such file, got 'x.pt'"):
        load_reward("flicker", [], checkpoint="x.pt")
    with pytest.raises(ModelFileError, match="HPS v2.1: 'HPS_v2.1_compressed.pt' was not found"):
        load_reward("hps_v2.1", [tmp_path])


def test_score_video_gives_a_clip_reward_the_whole_clip_in_one_call():
    """Score Video / Rank Videos: a clip reward scores the whole clip once (not per micro-batch of frames), and a mix
    with one scores its frame rewards on the chosen frames only."""
    clip = torch.from_numpy(moving_square(3))
    dynamism = load_reward("dynamism", [])
    done = []
    result = score_video(dynamism, clip, "", mode="evenly", count=2, micro_batch=2, progress=done.append)
    expected = float(np.mean((moving_square(3)[1:] - moving_square(3)[:-1]) ** 2))
    assert result.whole_clip and result.frame_scores == [pytest.approx(expected, abs=1e-7)] and done == [2]
    assert result.describe().startswith(f"video score: {result.score:.6g} (the whole clip)")
    brightness = Brightness()
    mixed = score_video(CompositeReward([RewardTerm(brightness, 1.0), RewardTerm(dynamism, 1.0)]), clip, "", mode="first")
    assert brightness.seen == [1] and mixed.frame_indices == [0] and not mixed.whole_clip
    assert mixed.score == pytest.approx(float(clip[0].mean()) + expected, abs=1e-6)


def test_training_refuses_a_clip_reward_with_too_few_decoded_frames(tmp_path):
    settings = dict(family="cogvideox", model={"folder": str(tmp_path)}, prompts=["a"], rewards=[{"key": "flicker"}])
    with pytest.raises(ValueError, match="Flicker scores change between frames and needs 3 decoded frames; "
                                         "decoded_latents 1 decodes 1"):
        TrainConfig.from_dict(settings)
    assert TrainConfig.from_dict({**settings, "decoded_latents": 2}).decoded_latents == 2


def test_every_reward_needs_the_frames_its_registry_entry_says(tmp_path):
    """The registry's `min_frames` (checked when a config is read, before any model loads) is the loaded reward's
    (MPS, a frame reward whose tiny file is a pickle written by conftest, aside)."""
    from video_reward_lora.reward.tiny import write_reward_models

    keys = [key for key in REWARDS if key != "mps"]
    root = write_reward_models(tmp_path, tuple(keys))
    needs = {key: getattr(load_reward(key, [root]), "min_frames", 1) for key in keys}
    assert needs == {key: REWARDS[key].min_frames for key in keys}
    assert {key for key, frames in needs.items() if frames > 1} == {"flicker", "dynamism", "subject_consistency",
                                                                    "action", "videoreward"}
