"""CogVideoX-Fun: loading from the published folder layout, the sampler, gradients through chosen steps, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.training.families.cogvideox import CogVideoXFun
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.lora import adapters
from video_reward_lora.training.lora.formats import Lora, LoraModule
from video_reward_lora.training.lora.keymap import COGVIDEOX, from_diffusers
from video_reward_lora.training.sampler import sample

SIZE = dict(frames=9, height=32, width=32)


@pytest.fixture(scope="module", params=[False, True], ids=["2b-sincos", "5b-rope"])
def cog_folder(request, tmp_path_factory) -> Path:
    return write_cogvideox_fun(tmp_path_factory.mktemp("cog") / "CogVideoX-Fun-V1.1-2b-InP", rotary=request.param)


def test_loading_matches_the_reference_modules(cog_folder):
    from diffusers import CogVideoXTransformer3DModel
    from safetensors.torch import load_file

    family = CogVideoXFun.load(cog_folder, dtype=torch.float32)
    config = json.loads((cog_folder / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_") and k != "add_noise_in_inpaint_model"}
    reference = CogVideoXTransformer3DModel(**config)
    result = reference.load_state_dict(load_file(cog_folder / "transformer" / "diffusion_pytorch_model.safetensors"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    hidden, text, t = torch.randn(1, 3, 33, 4, 4), torch.randn(1, 226, 32), torch.tensor([400])
    rope = family._rotary(3, 4, 4)
    with torch.no_grad():
        expected = reference.eval()(hidden, text, t, image_rotary_emb=rope, return_dict=False)[0]
        ours = family.transformer(hidden, text, t, image_rotary_emb=rope, return_dict=False)[0]
    reference_state = reference.state_dict()
    assert all(torch.equal(v, reference_state[k]) for k, v in family.transformer.state_dict().items())
    assert torch.allclose(ours, expected, atol=1e-6)  # same weights; attention kernels may round differently
    assert family.add_image_noise is True and family.new_scheduler().config.prediction_type == "v_prediction"


def test_seeded_sampling_is_deterministic(cog_folder):
    family = CogVideoXFun.load(cog_folder, dtype=torch.float32)
    runs = [sample(family, ["a red ball", "a blue sky"], steps=3, generator=torch.Generator().manual_seed(1), **SIZE) for _ in range(2)]
    assert runs[0].shape == (2, 3, 16, 4, 4) and torch.equal(runs[0], runs[1])
    other = sample(family, ["a red ball", "a blue sky"], steps=3, generator=torch.Generator().manual_seed(2), **SIZE)
    assert not torch.equal(runs[0], other)
    frames = family.decode(runs[0], first_n=1)
    assert frames.shape == (2, 1, 3, 32, 32) and 0 <= frames.min() and frames.max() <= 1


def test_text_encoder_can_be_released_after_caching(cog_folder):
    family = CogVideoXFun.load(cog_folder, dtype=torch.float32)
    first = family.encode(["a red ball"]).tensors["embeds"]
    family.release_text_encoders()
    assert torch.equal(family.encode(["a red ball"]).tensors["embeds"], first)
    with pytest.raises(RuntimeError, match="text encoder was released"):
        family.encode(["a cat"])


def test_gradients_reach_the_lora_only_through_chosen_steps(cog_folder):
    family = CogVideoXFun.load(cog_folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for name, layer in family.transformer.named_modules():
        if isinstance(layer, torch.nn.Linear) and from_diffusers(COGVIDEOX, name):
            modules[from_diffusers(COGVIDEOX, name)] = LoraModule(
                torch.randn(2, layer.in_features, generator=generator) * 0.1, torch.randn(layer.out_features, 2, generator=generator) * 0.1, 2.0)
    adapters.attach(family.transformer, Lora(COGVIDEOX, modules), COGVIDEOX)
    lora_params = [p for n, p in family.transformer.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.requires_grad_(True)
    grad_modes = []
    hook = family.transformer.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    latents = sample(family, ["a red ball"], steps=4, guidance=6.0, generator=torch.Generator().manual_seed(0), grad_steps={3}, **SIZE)
    assert grad_modes == [False, False, False, True]
    family.decode(latents, first_n=1).mean().backward()
    assert all(p.grad is not None for p in lora_params) and sum(p.grad.abs().sum() for p in lora_params) > 0
    grad_modes.clear()
    none = sample(family, ["a red ball"], steps=4, guidance=6.0, generator=torch.Generator().manual_seed(0), **SIZE)
    hook.remove()
    assert grad_modes == [False] * 4 and not none.requires_grad
    assert torch.allclose(none, latents.detach(), atol=1e-6)


def test_image_to_video_keeps_the_first_frame(cog_folder):
    family = CogVideoXFun.load(cog_folder, dtype=torch.float32)
    family.add_image_noise = False
    latents = torch.zeros(1, 3, 16, 4, 4)
    condition = family.conditioning(latents, torch.rand(1, 3, 32, 32))
    scale = family.vae.config.scaling_factor
    assert condition.shape == (1, 3, 17, 4, 4)
    assert torch.allclose(condition[:, 0, 0], torch.full((1, 4, 4), scale)) and condition[:, 1:, 0].abs().max() == 0
    assert family.conditioning(latents, None).abs().max() == 0
    with pytest.raises(ValueError, match="start image is 16x16"):
        family.conditioning(latents, torch.rand(1, 3, 16, 16))


def test_bad_folders(cog_folder, tmp_path):
    with pytest.raises(ModelFileError, match="is not a folder"):
        CogVideoXFun.load(cog_folder / "transformer" / "config.json")
    partial = tmp_path / "partial"
    shutil.copytree(cog_folder, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(ModelFileError, match="has no 'vae' subfolder"):
        CogVideoXFun.load(partial)
    wrong = tmp_path / "wrong"
    shutil.copytree(cog_folder, wrong)
    config = json.loads((wrong / "transformer" / "config.json").read_text())
    (wrong / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(ModelFileError, match="holds a WanTransformer3DModel model, not CogVideoX-Fun"):
        CogVideoXFun.load(wrong)
    (wrong / "transformer" / "config.json").write_text(json.dumps({**config, "in_channels": 16}))
    with pytest.raises(ModelFileError, match="InP models have 33"):
        CogVideoXFun.load(wrong)
    (wrong / "transformer" / "config.json").write_text(json.dumps(config))
    weights = wrong / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        CogVideoXFun.load(wrong)
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        sample(CogVideoXFun.load(cog_folder), ["x"], frames=8, height=32, width=32, steps=1)
