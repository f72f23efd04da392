"""PickScore and the aesthetic predictors: loading from the official layouts, score formulas and errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.reward.registry import load_reward


def test_pickscore_is_logit_scaled_cosine(reward_root, video):
    from transformers import CLIPModel

    model = load_reward("pickscore", [reward_root])
    reference = CLIPModel.from_pretrained(str(reward_root / "PickScore_v1")).eval()
    pixels = model.preprocess(video)
    ids = model.tokenizer("a red square", padding=True, return_tensors="pt").input_ids
    with torch.no_grad():
        image = F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(reference.get_text_features(input_ids=ids).pooler_output, dim=-1)
        expected = reference.logit_scale.exp() * image @ text[0]
        ours = model(video, "a red square")
    assert torch.allclose(ours, expected, atol=1e-4)
    assert 50 < reference.logit_scale.exp() < 150


@pytest.mark.parametrize("key,head,field", [("aesthetic_v2", "layers", "image_embeds"), ("aesthetic_v2.5", "scoring_head", "pooler_output")])
def test_aesthetic_is_linear_head_on_normalised_embedding(reward_root, video, key, head, field):
    model = load_reward(key, [reward_root])
    raw = torch.load(reward_root / model.spec.checkpoint, weights_only=True)
    assert all(k.startswith(head + ".") for k in raw)
    weights = [(raw[f"{head}.{i}.weight"].float(), raw[f"{head}.{i}.bias"].float()) for i in sorted({int(k.split(".")[1]) for k in raw})]
    with torch.no_grad():
        embedding = F.normalize(getattr(model.backbone(pixel_values=model.preprocess(video)), field), dim=-1)
        for w, b in weights:
            embedding = embedding @ w.T + b
        frames = video.clone().requires_grad_(True)
    scores = model(frames, "ignored prompt")
    assert torch.allclose(scores.detach(), embedding[:, 0], atol=1e-2 if key == "aesthetic_v2.5" else 1e-5)
    scores.sum().backward()
    assert frames.grad.abs().sum() > 0
    assert torch.equal(model(video, "another prompt"), scores.detach())


@pytest.mark.parametrize("vision_projection", [None, 48])
def test_aesthetic_v2_projection_is_sized_as_the_clipmodel(reward_root, tmp_path, video, vision_projection):
    """A CLIPModel folder whose vision_config lacks projection_dim (or gives another value than the top-level one,
    which CLIPModel uses) scores as CLIPModel.get_image_features -> normalise -> head computes it."""
    from transformers import CLIPModel

    folder = tmp_path / "clip-vit-large-patch14"
    shutil.copytree(reward_root / folder.name, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["projection_dim"] == 32
    config["vision_config"].pop("projection_dim")
    if vision_projection is not None:
        config["vision_config"]["projection_dim"] = vision_projection
    (folder / "config.json").write_text(json.dumps(config))
    model = load_reward("aesthetic_v2", [tmp_path, reward_root])
    reference = CLIPModel.from_pretrained(str(folder)).eval()
    raw = torch.load(reward_root / model.spec.checkpoint, weights_only=True)
    with torch.no_grad():
        expected = F.normalize(reference.get_image_features(pixel_values=model.preprocess(video)).pooler_output, dim=-1)
        for i in sorted({int(k.split(".")[1]) for k in raw}):  # the Linear layers (Dropout is inactive in eval)
            expected = expected @ raw[f"layers.{i}.weight"].T + raw[f"layers.{i}.bias"]
        scores = model(video, "")
    assert expected.shape == (6, 1) and torch.allclose(scores, expected[:, 0], atol=1e-5)
    config["projection_dim"] = 48  # the top-level size must be the file's visual_projection size
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="wrong shapes .*visual_projection.weight"):
        load_reward("aesthetic_v2", [tmp_path, reward_root])


def test_aesthetic_head_of_the_other_version_is_refused(reward_root):
    with pytest.raises(ModelFileError, match="no 'scoring_head.\\*' keys"):
        load_reward("aesthetic_v2.5", [reward_root], checkpoint="sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(ModelFileError, match="needs clip-vit-large-patch14"):
        load_reward("aesthetic_v2", [reward_root], encoder="siglip-so400m-patch14-384")


def test_pickscore_folder_problems(reward_root, tmp_path):
    with pytest.raises(ModelFileError, match="is a file; PickScore needs the PickScore_v1 model folder"):
        load_reward("pickscore", [reward_root], checkpoint="HPS_v2.1_compressed.pt")
    with pytest.raises(ModelFileError, match="'siglip' model"):
        load_reward("pickscore", [reward_root], checkpoint="siglip-so400m-patch14-384")
    broken = tmp_path / "PickScore_v1"
    shutil.copytree(reward_root / "PickScore_v1", broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="has no weights"):
        load_reward("pickscore", [tmp_path, reward_root])
    shutil.copy(reward_root / "PickScore_v1" / "model.safetensors", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="could not be loaded"):
        load_reward("pickscore", [tmp_path, reward_root])


def test_missing_tokenizer_folder(reward_root, tmp_path):
    shutil.copy(reward_root / "HPS_v2.1_compressed.pt", tmp_path)
    (tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K").mkdir()
    with pytest.raises(ModelFileError, match="has no CLIP tokenizer files"):
        load_reward("hps_v2.1", [tmp_path])


def test_unknown_reward():
    with pytest.raises(ValueError, match="unknown reward model 'hps3'"):
        load_reward("hps3", [])
