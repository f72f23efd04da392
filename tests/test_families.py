"""CogVideoX-Fun and EasyAnimate (V5 and V5.1): loading from the published folder layouts, the sampler, gradients through chosen
steps, image-to-video conditioning and errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from random_lora import linear_shapes, random_lora
import torch

from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.training.families.cogvideox import CogVideoXFun
from video_reward_lora.training.families.easyanimate import EasyAnimate, EasyAnimateV51
from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate, write_easyanimate_v51
from video_reward_lora.training.lora import adapters
from video_reward_lora.training.sampler import sample

SIZE = dict(frames=9, height=32, width=32)


WRITERS = {
    "cog-2b-sincos": (CogVideoXFun, lambda p: write_cogvideox_fun(p / "CogVideoX-Fun-V1.1-2b-InP")),
    "cog-5b-rope": (CogVideoXFun, lambda p: write_cogvideox_fun(p / "CogVideoX-Fun-V1.1-5b-InP", rotary=True)),
    "easyanimate": (EasyAnimate, lambda p: write_easyanimate(p / "EasyAnimateV5-7b-zh-InP")),
    "easyanimate-v5.1": (EasyAnimate, lambda p: write_easyanimate_v51(p / "EasyAnimateV5.1-7b-zh-InP")),
}
EA_RENAMES = {".attn2.to_q.": ".attn1.add_q_proj.", ".attn2.to_k.": ".attn1.add_k_proj.", ".attn2.to_v.": ".attn1.add_v_proj.",
              ".attn2.to_out.0.": ".attn1.to_add_out.", ".attn2.norm_q.": ".attn1.norm_added_q.", ".attn2.norm_k.": ".attn1.norm_added_k."}


@pytest.fixture(scope="module", params=list(WRITERS))
def model(request, tmp_path_factory):
    family_cls, write = WRITERS[request.param]
    return family_cls, write(tmp_path_factory.mktemp(request.param))


def _reference_transformer(family_cls, folder: Path):
    """The transformer built directly from its config.json and the weight file (renamed by hand for EasyAnimate)."""
    import inspect

    from diffusers import CogVideoXTransformer3DModel, EasyAnimateTransformer3DModel
    from safetensors.torch import load_file

    cls = CogVideoXTransformer3DModel if family_cls is CogVideoXFun else EasyAnimateTransformer3DModel
    config = json.loads((folder / "transformer" / "config.json").read_text())
    reference = cls(**{k: v for k, v in config.items() if k in inspect.signature(cls.__init__).parameters})
    state = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    if family_cls is EasyAnimate:
        assert any(".attn2.to_q." in k for k in state)  # the file holds the original names
        for old, new in EA_RENAMES.items():
            state = {k.replace(old, new): v for k, v in state.items()}
    result = reference.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return reference.eval()


def test_loading_matches_the_reference_modules(model):
    family_cls, folder = model
    family = family_cls.load(folder, dtype=torch.float32)
    reference = _reference_transformer(family_cls, folder)
    reference_state = reference.state_dict()
    assert family.transformer.state_dict().keys() == reference_state.keys()
    assert all(torch.equal(v, reference_state[k]) for k, v in family.transformer.state_dict().items())
    latents = family.init_latents(1, 9, 32, 32, torch.Generator().manual_seed(0))
    text = family.encode(["a red ball"])
    condition = family.conditioning(latents, None)
    t = torch.tensor([400.0])
    with torch.no_grad():
        ours = family.predict(latents, t, text, condition)
        family.transformer = reference
        expected = family.predict(latents, t, text, condition)
    assert torch.allclose(ours, expected, atol=1e-6)  # same weights; attention kernels may round differently
    assert family.add_image_noise is True


def test_seeded_sampling_is_deterministic(model):
    family = model[0].load(model[1], dtype=torch.float32)
    runs = [sample(family, ["a red ball", "a blue sky"], steps=3, generator=torch.Generator().manual_seed(1), **SIZE) for _ in range(2)]
    assert runs[0].shape == family.latent_shape(2, 9, 32, 32) and torch.equal(runs[0], runs[1])
    other = sample(family, ["a red ball", "a blue sky"], steps=3, generator=torch.Generator().manual_seed(2), **SIZE)
    assert not torch.equal(runs[0], other)
    frames = family.decode(runs[0], first_n=1)
    assert frames.shape == (2, 1, 3, 32, 32) and 0 <= frames.min() and frames.max() <= 1


def test_text_encoder_can_be_released_after_caching(model):
    family = model[0].load(model[1], dtype=torch.float32)
    first = family.encode(["a red ball"]).tensors["embeds"]
    family.release_text_encoders()
    assert torch.equal(family.encode(["a red ball"]).tensors["embeds"], first)
    with pytest.raises(RuntimeError, match="text encoder was released"):
        family.encode(["a cat"])


def test_gradients_reach_the_lora_only_through_chosen_steps(model):
    family = model[0].load(model[1], dtype=torch.float32)
    lora = random_lora(family.lora_family, linear_shapes(family.transformer, family.lora_family), torch.Generator().manual_seed(0))
    adapters.attach(family.transformer, lora, family.lora_family)
    lora_params = [p for n, p in family.transformer.named_parameters() if "lora_" in n
                   and not (family.name == "EasyAnimate" and ".1." in n and ("to_add_out" in n or "txt_ff" in n))]
    for p in lora_params:
        p.requires_grad_(True)
    grad_modes = []
    hook = family.transformer.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    latents = sample(family, ["a red ball"], steps=4, guidance=6.0, generator=torch.Generator().manual_seed(0), grad_steps={3}, **SIZE)
    assert grad_modes == [False, False, False, True]
    family.decode(latents, first_n=1).mean().backward()
    assert all(p.grad is not None for p in lora_params) and sum(p.grad.abs().sum() for p in lora_params) > 0
    for p in lora_params:
        p.grad = None
    early = sample(family, ["a red ball"], steps=4, guidance=6.0, generator=torch.Generator().manual_seed(0), grad_steps={1}, **SIZE)
    family.decode(early, first_n=1).mean().backward()  # a chosen early step still gets gradient via the scheduler
    assert sum(p.grad.abs().sum() for p in lora_params) > 0
    for p in lora_params:
        p.grad = None
    drtune = sample(family, ["a red ball"], steps=4, guidance=6.0, generator=torch.Generator().manual_seed(0), grad_steps={2, 3},
                    stop_input_gradient=True, **SIZE)
    family.decode(drtune, first_n=1).mean().backward()
    assert sum(p.grad.abs().sum() for p in lora_params) > 0
    grad_modes.clear()
    none = sample(family, ["a red ball"], steps=4, guidance=6.0, generator=torch.Generator().manual_seed(0), **SIZE)
    hook.remove()
    assert grad_modes == [False] * 4 and not none.requires_grad
    assert torch.allclose(none, latents.detach(), atol=1e-6)


def test_image_to_video_keeps_the_first_frame(model):
    family = model[0].load(model[1], dtype=torch.float32)
    family.add_image_noise = False
    latents = torch.zeros(family.latent_shape(1, 9, 32, 32))
    condition = family.conditioning(latents, torch.rand(1, 3, 32, 32))
    if isinstance(family, CogVideoXFun):  # [B, F, C, h, w]; EasyAnimate is [B, C, F, h, w]
        condition = condition.permute(0, 2, 1, 3, 4)
    scale = family.vae.config.scaling_factor
    assert condition.shape == (1, 17, 3, 4, 4)
    assert torch.allclose(condition[:, 0, 0], torch.full((1, 4, 4), scale)) and condition[:, 0, 1:].abs().max() == 0
    assert family.conditioning(latents, None).abs().max() == 0
    with pytest.raises(ValueError, match="start image is 16x16"):
        family.conditioning(latents, torch.rand(1, 3, 16, 16))


def test_bad_folders(model, tmp_path):
    family_cls, model = model
    with pytest.raises(ModelFileError, match="is not a folder"):
        family_cls.load(model / "transformer" / "config.json")
    partial = tmp_path / "partial"
    shutil.copytree(model, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(ModelFileError, match="has no 'vae' subfolder"):
        family_cls.load(partial)
    wrong = tmp_path / "wrong"
    shutil.copytree(model, wrong)
    config = json.loads((wrong / "transformer" / "config.json").read_text())
    (wrong / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(ModelFileError, match=f"holds a WanTransformer3DModel model, not {family_cls.name}"):
        family_cls.load(wrong)
    (wrong / "transformer" / "config.json").write_text(json.dumps({**config, "in_channels": 16}))
    with pytest.raises(ModelFileError, match="InP models have 33"):
        family_cls.load(wrong)
    (wrong / "transformer" / "config.json").write_text(json.dumps(config))
    weights = wrong / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        family_cls.load(wrong)
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        sample(family_cls.load(model), ["x"], frames=8, height=32, width=32, steps=1)


@pytest.fixture(scope="module")
def v51_folder(tmp_path_factory) -> Path:
    return write_easyanimate_v51(tmp_path_factory.mktemp("v51") / "EasyAnimateV5-7b-zh-InP")  # a V5 name: the contents decide


def test_easyanimate_version_comes_from_the_folder_contents(v51_folder, tmp_path):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    v51 = EasyAnimate.load(v51_folder, dtype=torch.float32)
    assert isinstance(v51, EasyAnimateV51) and isinstance(v51.new_scheduler(), FlowMatchEulerDiscreteScheduler)
    assert list(v51.text_encoders) == ["qwen"]
    v5 = EasyAnimate.load(write_easyanimate(tmp_path / "EasyAnimateV5.1-7b-zh-InP"), dtype=torch.float32)
    assert type(v5) is EasyAnimate and type(v5.new_scheduler()) is DDIMScheduler
    assert list(v5.text_encoders) == ["bert", "t5"]
    odd = tmp_path / "odd"
    shutil.copytree(v51_folder, odd)
    config = json.loads((odd / "text_encoder" / "config.json").read_text())
    (odd / "text_encoder" / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ModelFileError, match="text_encoder holds a t5 model; EasyAnimate V5 has Bert"):
        EasyAnimate.load(odd)
    (odd / "text_encoder" / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((odd / "tokenizer" / "tokenizer_config.json").read_text())
    del tokenizer_config["chat_template"]
    (odd / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ModelFileError, match="has no chat template"):
        EasyAnimate.load(odd)


def test_easyanimate_v51_samples_with_dynamically_shifted_flow_matching(v51_folder):
    """Sigmas shifted with mu=1 as upstream sets them (e / (e + 1/s - 1)), and plain Euler steps x += (s' - s) v."""
    import math

    family = EasyAnimate.load(v51_folder, dtype=torch.float32)
    scheduler = family.schedule(3)
    linear = torch.linspace(1.0, 0.001, 3)
    expected = math.e / (math.e + 1 / linear - 1)
    assert torch.allclose(scheduler.sigmas, torch.cat([expected, torch.zeros(1)]), atol=1e-6)
    assert torch.allclose(scheduler.timesteps, expected * 1000, atol=1e-3)
    latents = sample(family, ["a red ball"], steps=3, guidance=6.0, generator=torch.Generator().manual_seed(3), **SIZE)
    x = family.init_latents(1, 9, 32, 32, torch.Generator().manual_seed(3))
    text = family.encode([""]).cat(family.encode(["a red ball"]))
    condition = family.conditioning(torch.cat([x] * 2), None)
    sigmas = scheduler.sigmas
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            negative, positive = family.predict(torch.cat([x] * 2), t, text, condition).chunk(2)
            x = x + (sigmas[i + 1] - sigmas[i]) * (negative + 6.0 * (positive - negative))
    assert torch.allclose(latents, x, atol=1e-5)


def test_easyanimate_v51_text_is_the_qwen2_state_entering_the_last_layer(v51_folder):
    """The chat-formatted prompt, padded on the right to 256 tokens, through a plain Qwen2 model holding all but the
    last decoder layer (and no final norm), with pads at rotary position 1."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    family = EasyAnimate.load(v51_folder, dtype=torch.float32)
    ours = family.encode(["a red ball"]).tensors["embeds"]
    config = json.loads((v51_folder / "text_encoder" / "config.json").read_text())
    layers = config["num_hidden_layers"] - 1
    reference = Qwen2Model(Qwen2Config(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["num_key_value_heads"], rms_norm_eps=config["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": config["rope_theta"]})).eval()
    reference.norm = torch.nn.Identity()
    weights = load_file(v51_folder / "text_encoder" / "model.safetensors")
    kept = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.") and k != "model.norm.weight"
            and not k.startswith(f"model.layers.{layers}.")}
    reference.load_state_dict(kept, strict=True)
    tokenizer = AutoTokenizer.from_pretrained(v51_folder / "tokenizer")
    chat = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\na red ball<|im_end|>\n"
            "<|im_start|>assistant\n")
    inputs = tokenizer(chat, padding="max_length", max_length=256, padding_side="right", return_tensors="pt")
    mask = inputs.attention_mask
    assert 0 < mask.sum() < 256
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        expected = reference(input_ids=inputs.input_ids, attention_mask=mask, position_ids=positions).last_hidden_state
    assert ours.shape == (1, 256, config["hidden_size"])
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(family.encode(["a blue sky"]).tensors["embeds"], ours, atol=1e-3)
