"""VideoReward on a tiny Qwen2-VL in the official folder layout: loading, determinism, parity with upstream's scoring
formula computed independently, gradients to the frames, and clear errors for missing files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.reward.registry import load_reward
from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.reward.video_reward import PROMPT_TEMPLATE, VideoRewardSettings, frame_count, resized_size

PROMPT = "A red fox runs across a snowy field."
CHECKPOINT = "checkpoint-11352"
# 6 frames of 64x80 at the default source_fps 16: 6 / 16 * 2 = 0.75 frames, raised to upstream's minimum of 4,
# taken at linspace(0, 5, 4).round() = [0, 2, 3, 5]; the tiny folder's max_frame_pixels 56*56 turns 64x80 (rounded to
# 56x84, over the cap) into floor(64/β/28)*28 x floor(80/β/28)*28 = 28x56 with β = sqrt(64*80/3136)
SAMPLED, SIZE = [0, 2, 3, 5], (28, 56)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reward_models(tmp_path_factory.mktemp("models") / "reward_models", ("videoreward",))


@pytest.fixture(scope="module")
def reward(root: Path) -> nn.Module:
    return load_reward("videoreward", [root])


@pytest.fixture
def frames() -> torch.Tensor:
    return torch.rand(6, 3, 64, 80, generator=torch.Generator().manual_seed(0))


def upstream_score(folder: Path, frames: torch.Tensor) -> dict[str, float]:
    """Upstream's scoring (trainer.py Qwen2VLRewardModelBT.forward, inference.py reward), computed here without the
    reward's code: the LoRA model built with PEFT as train_reward.py does and model.pth loaded into it strictly; the
    video patches in numpy as Qwen2-VL's image processor lays them out (transformers 4.45); the language model with
    the plain 1D positions that upstream's `position_ids=None` gives; the head read at the reward tokens, then
    standardised and summed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    settings = json.loads((folder / "model_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(folder / CHECKPOINT / "tokenizer"))
    config = Qwen2VLConfig.from_pretrained(str(folder))

    class RewardModelBT(Qwen2VLForConditionalGeneration):
        def __init__(self, config: Qwen2VLConfig) -> None:
            super().__init__(config)
            self.rm_head = nn.Linear(config.text_config.hidden_size, settings["model_config"]["output_dim"], bias=False)

    lora = settings["peft_lora_config"]
    base = RewardModelBT(config)
    targets = [
        name for name, module in base.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding)) and not any(ex in name for ex in lora["lora_namespan_exclude"])
    ]
    model = get_peft_model(base, LoraConfig(
        target_modules=targets, r=lora["lora_r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
        task_type=lora["lora_task_type"], bias="none",
    ))
    state = torch.load(folder / CHECKPOINT / "model.pth", weights_only=True)
    old, new = "base_model.model.", "base_model.model.model."
    state = {
        (new + "visual." + k[len(old + "visual."):]) if k.startswith(old + "visual.")
        else (new + "language_model." + k[len(new):]) if k.startswith(new) else k: v
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True)
    model = model.float().eval()
    inner = model.base_model.model

    clip = F.interpolate(frames[SAMPLED], size=SIZE, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    pixels = (clip.numpy() - np.array(OPENAI_CLIP_MEAN)[:, None, None]) / np.array(OPENAI_CLIP_STD)[:, None, None]
    t, h, w = len(SAMPLED) // 2, SIZE[0] // 14, SIZE[1] // 14
    patches = pixels.reshape(t, 2, 3, h // 2, 2, 14, w // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = torch.from_numpy(patches.reshape(t * h * w, 3 * 2 * 14 * 14).astype(np.float32))

    text = PROMPT_TEMPLATE.format(text_prompt=PROMPT)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}],
        tokenize=False, add_generation_prompt=True,
    )
    ids = tokenizer(chat.replace("<|video_pad|>", "<|video_pad|>" * (t * h * w // 4)), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        embeds = inner.model.language_model.embed_tokens(ids)
        video = inner.model.visual(pixel_values, grid_thw=torch.tensor([[t, h, w]])).pooler_output
        embeds = embeds.masked_scatter((ids == config.video_token_id)[..., None].expand_as(embeds), video)
        positions = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        hidden = inner.model.language_model(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), position_ids=positions
        ).last_hidden_state
        logits = inner.rm_head(hidden)
    special = torch.tensor(tokenizer.convert_tokens_to_ids(["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]))
    raw = logits[torch.isin(ids, special)].view(1, 3, -1).view(1, -1)[0]
    norm = settings["inference_config"]
    scores = {dim: (raw[i].item() - norm[f"{dim}_mean"]) / norm[f"{dim}_std"] for i, dim in enumerate(("VQ", "MQ", "TA"))}
    return {**scores, "Overall": sum(scores.values())}


def test_upstream_sampling_and_size_rules() -> None:
    """Wan's 81 frames at 16 fps, 480x832: 81/16*2 ≈ 10 frames; 480x832 over 448² pixels scales to 336x588."""
    official = VideoRewardSettings(fps=2.0, num_frames=None, max_pixels=448 * 448, output_dim=1, lora_scale=2.0, norm=None, base_model="")
    assert frame_count(81, official, 16.0) == 10
    assert frame_count(3, official, 16.0) == 2
    assert resized_size(480, 832, 28, 448 * 448) == (336, 588)
    assert resized_size(64, 64, 28, 448 * 448) == (336, 336)  # raised to at least 128*28*28 pixels


def test_loads_and_scores_deterministically(reward: nn.Module, frames: torch.Tensor) -> None:
    assert reward.per_clip and reward.label == "VideoReward"
    first = reward(frames, PROMPT)
    subs = dict(reward.last_sub_scores)
    second = reward(frames, PROMPT)
    assert first.shape == (1,) and first.dtype == torch.float32 and not first.requires_grad
    assert torch.equal(first, second)
    assert set(subs) == {"VQ", "MQ", "TA", "Overall"}
    assert subs["Overall"] == pytest.approx(subs["VQ"] + subs["MQ"] + subs["TA"], abs=1e-5)
    assert first.item() == pytest.approx(subs["Overall"], abs=1e-6)
    assert reward(frames.flip(0), PROMPT).item() != pytest.approx(first.item(), abs=1e-6)


def test_matches_upstream_formula(root: Path, reward: nn.Module, frames: torch.Tensor) -> None:
    """The same tiny model's score through upstream's formula, computed independently (float32; merged vs PEFT's
    unmerged LoRA and summation order differ by float rounding only: tolerance 1e-5; scores of different clips
    differ by about 1e-2)."""
    score = reward(frames, PROMPT)
    expected = upstream_score(root / "VideoReward", frames)
    for key, value in expected.items():
        assert reward.last_sub_scores[key] == pytest.approx(value, abs=1e-5), key
    assert score.item() == pytest.approx(expected["Overall"], abs=1e-5)


def test_gradients_reach_the_sampled_frames(reward: nn.Module, frames: torch.Tensor) -> None:
    frames.requires_grad_(True)
    reward.differentiable = True
    try:
        reward(frames, PROMPT).sum().backward()
    finally:
        reward.differentiable = False
    grad = frames.grad.abs().sum(dim=(1, 2, 3))
    assert torch.isfinite(frames.grad).all()
    assert (grad[SAMPLED] > 0).all() and (grad[[1, 4]] == 0).all()
    assert all(p.grad is None for p in reward.parameters())


def test_missing_files_give_clear_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="'VideoReward' was not found"):
        load_reward("videoreward", [tmp_path])
    folder = tmp_path / "VideoReward"
    shutil.copytree(root / "VideoReward", folder)
    weights = folder / CHECKPOINT / "model.pth"
    state = torch.load(weights, weights_only=True)
    del state["base_model.model.rm_head.weight"]
    torch.save(state, weights)
    with pytest.raises(ModelFileError, match="lacks the reward head rm_head.weight"):
        load_reward("videoreward", [tmp_path])
    weights.unlink()
    with pytest.raises(ModelFileError, match="has no model.pth"):
        load_reward("videoreward", [tmp_path])
