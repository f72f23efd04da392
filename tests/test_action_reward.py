"""VADER's action reward on a tiny VideoMAE-for-classification folder: loading, prompt mapping, gradients, and parity with
transformers' VideoMAE image processor and with VADER's own scoring."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from video_reward_lora.reward.action import IMAGENET_MEAN, IMAGENET_STD, videomae_pixels
from video_reward_lora.reward.composite import is_clip_reward, select_frames
from video_reward_lora.reward.files import ModelFileError, read_safetensors, write_safetensors_atomic
from video_reward_lora.reward.registry import REWARDS, load_reward
from video_reward_lora.reward.tiny import write_reward_models

FOLDER = REWARDS["action"].checkpoint
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def action_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reward_models(tmp_path_factory.mktemp("models") / "reward_models", ("action",))


@pytest.fixture
def reward(action_root):
    return load_reward("action", [action_root])


def uint8_clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random clip as a video file would give it: [T,3,H,W] uint8."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, 6, 10, generator=generator)
    return (F.interpolate(coarse, size=(height, width), mode="bilinear") * 255).round().to(torch.uint8)


def vader_model(action_root: Path, num_frames: int):
    """The classifier as VADER builds it: `from_pretrained` with num_frames set to the frames it scores."""
    from transformers import VideoMAEForVideoClassification

    return VideoMAEForVideoClassification.from_pretrained(str(action_root / FOLDER), num_frames=num_frames).eval()


def test_loads_as_a_deterministic_clip_reward(reward):
    clip = uint8_clip(20, 96, 160).float() / 255
    assert is_clip_reward(reward) and reward.label == "Action (VideoMAE)" and reward.clip_frames == 16
    score = reward(clip, "A boy playing guitar on a sunny beach.")
    assert score.shape == (1,) and 0 < score.item() < 1
    assert torch.equal(reward(clip, "A boy playing guitar on a sunny beach."), score)
    subs = reward.last_sub_scores
    assert subs["target probability"] == pytest.approx(score.item(), rel=1e-6)
    assert score.item() <= subs["top-1 probability"] < 1
    assert torch.equal(reward(clip[select_frames(20, "evenly", 16)], "playing guitar"), score)
    with pytest.raises(ValueError, match=r"needs a clip of at least 2 frames, got 1"):
        reward(clip[:1], "jogging")


def test_gradients_reach_every_scored_frame(reward):
    frames = (uint8_clip(16, 64, 64).float() / 255).requires_grad_(True)
    score = reward(frames, "A woman chopping wood in a forest.")
    score.sum().backward()
    assert torch.isfinite(frames.grad).all() and (frames.grad.abs().sum(dim=(1, 2, 3)) > 0).all()
    reward.set_gradient_checkpointing(True)
    again = frames.detach().clone().requires_grad_(True)
    checkpointed = reward(again, "A woman chopping wood in a forest.")
    checkpointed.sum().backward()
    assert checkpointed.item() == pytest.approx(score.item(), rel=1e-5)
    assert torch.allclose(again.grad, frames.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("prompt, label", [
    ("A young girl playing the piano in a cozy living room.", "playing piano"),  # VADER's chatgpt_custom_actpred2.txt
    ("A boy playing guitar on a sunny beach.", "playing guitar"),
    ("A man playing the violin in a bustling city square.", "playing violin"),
    ("A woman chopping wood in a forest.", "chopping wood"),
    ("A girl jogging along a scenic trail.", "jogging"),
    ("A man playing guitar in the woods.", "playing guitar"),  # the first keyword in VADER's order wins
    ("yoga", "yoga"),  # a prompt that is a Kinetics label is its own target
])
def test_prompts_map_to_kinetics_classes_as_in_vader(reward, prompt, label):
    assert reward.text_features(prompt) == reward.model.config.label2id[label]


def test_unmapped_prompts_and_explicit_targets(reward):
    with pytest.raises(ValueError, match=r"the prompt 'a cat asleep on a sofa' names no Kinetics-400 action.*"
                                         r"piano, guitar, .*jogging; reword it, or set the reward's target_class"):
        reward.text_features("a cat asleep on a sofa")
    with pytest.raises(ValueError, match="names no Kinetics-400 action"):
        reward.text_features("A Woman Jogging")  # VADER's keywords match case-sensitively
    reward.target_class = "playing saxophone"
    assert reward.text_features("a cat asleep on a sofa") == reward.model.config.label2id["playing saxophone"]
    reward.target_class = "flying a carpet"
    with pytest.raises(ValueError, match="'flying a carpet' is not one of the model's 400 classes"):
        reward.text_features("jogging")


def test_file_errors(action_root, tmp_path):
    with pytest.raises(ModelFileError, match=r"Action \(VideoMAE\): 'videomae-base-finetuned-kinetics' was not found "
                                             r"in models/reward_models .* Get it from https://huggingface.co/MCG-NJU/"):
        load_reward("action", [tmp_path])
    folder = tmp_path / FOLDER
    folder.mkdir()
    (folder / "config.json").write_text((action_root / FOLDER / "config.json").read_text())
    tensors, _ = read_safetensors(action_root / FOLDER / "model.safetensors")
    write_safetensors_atomic({k: v for k, v in tensors.items() if not k.startswith("classifier.")}, folder / "model.safetensors")
    with pytest.raises(ModelFileError, match=r"the weights do not fit the model: missing 2 keys \(classifier.bias"):
        load_reward("action", [tmp_path])
    (folder / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ModelFileError, match="holds a 'clip' model; Action \\(VideoMAE\\) needs videomae-base-finetuned"):
        load_reward("action", [tmp_path])


@pytest.mark.parametrize("height, width, official", [(256, 256, True), (96, 160, False), (480, 832, False)])
def test_parity_with_the_videomae_image_processor(action_root, reward, height, width, official):
    """transformers' VideoMAEImageProcessor (its PIL backend: no torchvision here) on the uint8 frames against our
    tensor pipeline on the same frames in 0..1. Square frames go through the official preprocessor settings
    (shortest side 224, centre crop 224: a squash for a square), others through its squash settings (VADER's
    geometry). PIL resizes a uint8 image in two separable passes, rounding to whole levels after each, so a pixel may
    differ by up to about 1/255 (measured: at most 1.00/255, 0.28-0.31/255 on average, on random frames); we allow
    1.05/255 at most and 0.35/255 on average. On the tiny model that moves the target probability by under 1%."""
    from transformers import VideoMAEImageProcessorPil

    geometry = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True)
    if not official:
        geometry = dict(size={"height": 224, "width": 224}, do_center_crop=False)
    processor = VideoMAEImageProcessorPil(**geometry, resample=2, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    clip = uint8_clip(16, height, width)
    expected = processor([frame.numpy() for frame in clip], return_tensors="pt")["pixel_values"]
    ours = videomae_pixels(clip.float() / 255, 224)
    assert expected.shape == (1, 16, 3, 224, 224) and ours.shape == (16, 3, 224, 224)
    levels = ((ours - expected[0]) * STD * 255).abs()
    assert levels.max().item() <= 1.05 and levels.mean().item() <= 0.35

    prompt = "A young woman playing guitar by a campfire."
    with torch.no_grad():
        probs = vader_model(action_root, 16)(pixel_values=expected).logits.softmax(-1)[0]
    score = reward(clip.float() / 255, prompt).item()
    assert score == pytest.approx(probs[reward.text_features(prompt)].item(), rel=1e-2)
    assert reward.last_sub_scores["top-1 probability"] == pytest.approx(probs.max().item(), rel=1e-2)


@pytest.mark.parametrize("frames", [8, 16])
def test_score_and_cross_entropy_equal_vaders_on_short_clips(action_root, reward, frames):
    """VADER scores all decoded frames on a model built for that many; its score is the softmax probability of the
    target and its loss the cross-entropy, which `log_probability` gives as minus the score."""
    clip = uint8_clip(frames, 96, 160, seed=1).float() / 255
    prompt = "A girl jogging along a scenic trail."
    target = reward.text_features(prompt)
    pixels = (F.interpolate(clip, size=(224, 224), mode="bilinear", antialias=True) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / STD
    with torch.no_grad():
        outputs = vader_model(action_root, frames)(pixel_values=pixels[None], labels=torch.tensor([target]))
    vader_score = (outputs.logits.exp() / outputs.logits.exp().sum()).squeeze()[target]
    assert reward(clip, prompt).item() == pytest.approx(vader_score.item(), rel=1e-5)
    reward.log_probability = True
    assert -reward(clip, prompt).item() == pytest.approx(outputs.loss.item(), rel=1e-5)
    assert reward.last_sub_scores["target probability"] == pytest.approx(vader_score.item(), rel=1e-5)
