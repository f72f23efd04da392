"""Wan2.2 A14B from ComfyUI's single files: loading (fp16 and fp8 scaled), expert switching, sampling, gradients
through a LoRA on one expert, image-to-video conditioning and the errors for wrong files."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from random_lora import linear_shapes, random_lora
import torch
from safetensors.torch import load_file, save_file

from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.families.tiny_wan import (DIM, FFN_DIM, LAYERS, SCALE_SHAPES, TEXT_DIM, scaled_fp8, vae_module,
                                                          write_wan22)
from video_reward_lora.training.families.wan import Wan22
from video_reward_lora.training.lora import adapters
from video_reward_lora.training.lora.keymap import WAN
from video_reward_lora.training.sampler import sample
from video_reward_lora.training.scaled_fp8 import read_dequantised

SIZE = dict(frames=9, height=32, width=32)
# original Wan name -> diffusers name, written here independently of diffusers' converter
TOP = {"patch_embedding": "patch_embedding", "text_embedding.0": "condition_embedder.text_embedder.linear_1",
       "text_embedding.2": "condition_embedder.text_embedder.linear_2", "time_embedding.0": "condition_embedder.time_embedder.linear_1",
       "time_embedding.2": "condition_embedder.time_embedder.linear_2", "time_projection.1": "condition_embedder.time_proj",
       "head.head": "proj_out"}
BLOCK = {"norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2", "self_attn.norm_q": "attn1.norm_q",
         "self_attn.norm_k": "attn1.norm_k", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
         **{f"{a}.{p}": f"{b}.{q}" for a, b in (("self_attn", "attn1"), ("cross_attn", "attn2"))
            for p, q in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))}}


def diffusers_name(key: str) -> str:
    if key == "head.modulation":
        return "scale_shift_table"
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if key.endswith(".modulation"):
        return key.replace(".modulation", ".scale_shift_table")
    if block:
        return f"blocks.{block[1]}.{BLOCK[block[2]]}.{block[3]}"
    module, param = key.rsplit(".", 1)
    return f"{TOP[module]}.{param}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_wan22(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def fp8_files(tmp_path_factory) -> dict[str, Path]:
    return write_wan22(tmp_path_factory.mktemp("models_fp8"), fp8_scaled=True)


@pytest.fixture(scope="module")
def t2v_files(tmp_path_factory) -> dict[str, Path]:
    return write_wan22(tmp_path_factory.mktemp("models_t2v"), fun_inpaint=False)


@pytest.fixture(scope="module")
def family(files) -> Wan22:
    return Wan22.load(**files, dtype=torch.float32)


def test_files_have_comfyui_names_and_formats(files, fp8_files):
    assert [p.relative_to(p.parents[1]).as_posix() for p in files.values()] == [
        "diffusion_models/wan2.2_fun_inpaint_high_noise_14B_fp16.safetensors",
        "diffusion_models/wan2.2_fun_inpaint_low_noise_14B_fp16.safetensors",
        "vae/wan_2.1_vae.safetensors", "text_encoders/umt5_xxl_fp16.safetensors"]
    expert = load_file(fp8_files["high"])
    assert expert["blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn and "scaled_fp8" in expert
    assert expert["blocks.0.self_attn.q.scale_weight"].dtype == torch.float32
    # as ComfyUI writes them: 0-dim float32 scales, scale_input 1
    assert expert["blocks.0.self_attn.q.scale_weight"].shape == expert["blocks.0.self_attn.q.scale_input"].shape == ()
    assert expert["blocks.0.self_attn.q.scale_input"].item() == 1.0
    text = load_file(fp8_files["text_encoder"])
    assert text["spiece_model"].dtype == torch.uint8 and text["encoder.block.1.layer.1.DenseReluDense.wo.weight"].dtype == torch.float8_e4m3fn


def test_loading_matches_reference_modules(family, files):
    from diffusers import WanTransformer3DModel

    config = family.transformer.config
    assert (config.num_attention_heads, config.attention_head_dim, config.ffn_dim, config.num_layers, config.in_channels,
            config.text_dim, config.freq_dim) == (DIM // 128, 128, FFN_DIM, LAYERS, 36, TEXT_DIM, 256)
    assert family.boundary == 0.9 and family.fps == 16
    latents = family.init_latents(1, 9, 32, 32, torch.Generator().manual_seed(0))
    text = family.encode(["a red ball"])
    condition = torch.randn(1, 20, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for expert, t in (("high", 950.0), ("low", 400.0)):
        reference = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=36,
                                          out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=FFN_DIM, num_layers=LAYERS)
        state = {diffusers_name(k): v.float() for k, v in load_file(files[expert]).items()}
        result = reference.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        ours = family.transformers[expert].state_dict()
        assert ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in state)
        with torch.no_grad():
            expected = reference.eval()(hidden_states=torch.cat([latents, condition], 1), timestep=torch.tensor([t]),
                                        encoder_hidden_states=text.tensors["embeds"], return_dict=False)[0]
            assert torch.allclose(family.predict(latents, torch.tensor(t), text, condition), expected, atol=1e-6)
    vae = {k: v.half().float() for k, v in vae_module().state_dict().items()}  # the file holds fp16
    assert family.vae.state_dict().keys() == vae.keys() and all(torch.equal(v, vae[k]) for k, v in family.vae.state_dict().items())
    text_file = load_file(files["text_encoder"])
    encoder_state = family.text_encoders["umt5"].state_dict()
    assert all(torch.equal(encoder_state[k], v.float()) for k, v in text_file.items() if k != "spiece_model")


def test_text_is_512_tokens_zero_after_the_prompt(family):
    embeds = family.encode(["a red ball rolling", ""]).tensors["embeds"]
    length = len(family.tokenizer.encode("a red ball rolling")) + 1  # with </s>
    assert embeds.shape == (2, 512, TEXT_DIM)
    assert embeds[0, :length].abs().sum(-1).min() > 0 and embeds[0, length:].abs().max() == 0
    assert embeds[1, :1].abs().sum() > 0 and embeds[1, 1:].abs().max() == 0  # the empty prompt is </s> alone


def test_fp8_scaled_files_load_to_the_dequantised_values(family, files, fp8_files):
    fp8 = Wan22.load(**fp8_files, dtype=torch.float32)
    raw, fp16 = load_file(fp8_files["low"]), load_file(files["low"])
    weights = fp8.transformer.state_dict()
    quantised = [k for k, v in raw.items() if v.dtype == torch.float8_e4m3fn and k.endswith(".weight")]
    assert len(quantised) == LAYERS * 10
    for key in quantised:
        scale = raw[key.replace(".weight", ".scale_weight")]
        ours = weights[diffusers_name(key)]
        assert torch.equal(ours, raw[key].float() * scale)  # dequantised in float32, exactly
        # and within e4m3's rounding of the fp16 weights: 3 mantissa bits (1/16), subnormal steps of scale / 512
        original = fp16[key].float()
        assert ((ours - original).abs() <= original.abs() / 16 + scale / 512).all()
    others = [k for k in fp16 if k not in quantised]
    assert all(torch.equal(weights[diffusers_name(k)], fp16[k].float()) for k in others)
    text = family.encode(["a red ball"]).tensors["embeds"]
    assert torch.allclose(fp8.encode(["a red ball"]).tensors["embeds"], text, atol=0.1 * text.abs().max())
    bf16 = Wan22.load(**fp8_files, dtype=torch.bfloat16)
    dtypes = {k: v.dtype for k, v in bf16.transformers["high"].state_dict().items()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    # diffusers keeps these in float32 when it loads Wan in bf16; so does the pack
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == dtypes["scale_shift_table"] == torch.float32


@pytest.mark.parametrize("scales", list(SCALE_SHAPES))
def test_fp8_files_with_every_scale_shape_load_and_train(files, tmp_path, scales):
    """ComfyUI's 0-dim scales, one-element ones, and one scale per output row ((out, 1) or (out,))."""
    experts = {role: tmp_path / f"{role}.safetensors" for role in ("high", "low")}
    for role, path in experts.items():
        save_file(scaled_fp8(load_file(files[role]), scales), path)
    raw, fp16 = load_file(experts["low"]), load_file(files["low"])
    ours = read_dequantised(experts["low"], torch.float32, "Wan expert")
    quantised = [k for k, v in raw.items() if v.dtype == torch.float8_e4m3fn and k.endswith(".weight")]
    assert len(quantised) == LAYERS * 10 and sorted(ours) == sorted(fp16)  # scales, scale_input and marker consumed
    for key in quantised:
        scale = raw[key.replace(".weight", ".scale_weight")]
        assert scale.dtype == torch.float32 and scale.shape == SCALE_SHAPES[scales](raw[key].shape[0])
        per_row = scale.double().reshape(-1, 1) if scale.numel() > 1 else scale.double().reshape(())
        # independently in float64: fp8 value times its row's scale; float32 rounds that product once (2^-24)
        expected = raw[key].double() * per_row
        assert torch.allclose(ours[key].double(), expected, rtol=2 ** -24, atol=0)
        # and within e4m3's rounding of the fp16 weights: 3 mantissa bits (1/16), subnormal steps of scale / 512
        original = fp16[key].double()
        assert ((ours[key].double() - original).abs() <= original.abs() / 16 + per_row / 512).all()
    family = Wan22.load(**{**files, **experts}, dtype=torch.float32)
    low = family.transformers["low"]
    weights = low.state_dict()
    assert all(torch.equal(weights[diffusers_name(k)], v) for k, v in ours.items())
    adapters.attach(low, random_lora(WAN, linear_shapes(low, WAN), torch.Generator().manual_seed(0)), WAN)
    lora_params = [p.requires_grad_(True) for n, p in low.named_parameters() if "lora_" in n]
    latents = family.init_latents(1, 5, 32, 32, torch.Generator().manual_seed(0))
    condition = torch.randn(1, 20, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    family.predict(latents, torch.tensor(400.0), family.encode(["a red ball"]), condition).square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in lora_params])
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0


def test_experts_switch_at_the_boundary(family, t2v_files):
    calls = []
    hooks = [model.register_forward_hook(lambda *_, name=name: calls.append(name)) for name, model in family.transformers.items()]
    sample(family, ["a red ball"], steps=10, guidance=6.0, generator=torch.Generator().manual_seed(0), **SIZE)
    for hook in hooks:
        hook.remove()
    assert calls == ["high"] * 4 + ["low"] * 6  # timesteps 1000, 975.7, 946.3, 909.7 | 863.1, ..., 24.4 (shift 5)
    t2v = Wan22.load(**t2v_files, dtype=torch.float32)
    assert t2v.boundary == 0.875 and t2v.expert(875.0) == "high" and t2v.expert(874.9) == "low"
    assert Wan22.load(**t2v_files, dtype=torch.float32, boundary=0.5, shift=3.0).new_scheduler().config.shift == 3.0


def test_idle_expert_is_offloaded_unless_it_trains(family, monkeypatch):
    moves = []
    for name, model in family.transformers.items():
        monkeypatch.setattr(model, "to", lambda device, name=name: moves.append((name, str(device))))
    monkeypatch.setattr(family, "offload_idle", True)
    monkeypatch.setattr(family, "device", torch.device("cpu:0"))  # the accelerator, told apart from the offload target
    sample(family, ["a red ball"], steps=4, guidance=1.0, **SIZE)  # high, high, low, low
    assert moves == [("low", "cpu"), ("high", "cpu:0")] * 2 + [("high", "cpu"), ("low", "cpu:0")] * 2
    moves.clear()
    parameter = next(family.transformers["high"].parameters())
    monkeypatch.setattr(parameter, "requires_grad", True)  # the high expert is being trained: it stays
    sample(family, ["a red ball"], steps=4, guidance=1.0, **SIZE)
    assert moves == [("low", "cpu"), ("high", "cpu:0")] * 2 + [("low", "cpu:0")] * 2


def test_seeded_sampling_is_deterministic(family):
    runs = [sample(family, ["a red ball", "a blue sky"], steps=3, generator=torch.Generator().manual_seed(1), **SIZE) for _ in range(2)]
    assert runs[0].shape == (2, 16, 3, 4, 4) and torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], sample(family, ["a red ball", "a blue sky"], steps=3, generator=torch.Generator().manual_seed(2), **SIZE))
    first = family.decode(runs[0], first_n=1)
    assert first.shape == (2, 1, 3, 32, 32) and 0 <= first.min() and first.max() <= 1
    assert family.decode(runs[0][:1]).shape == (1, 9, 3, 32, 32)


def test_gradients_reach_a_lora_on_the_low_expert_only_through_its_chosen_steps(files):
    family = Wan22.load(**files, dtype=torch.float32)
    low = family.transformers["low"]
    adapters.attach(low, random_lora(WAN, linear_shapes(low, WAN), torch.Generator().manual_seed(0)), WAN)
    lora_params = [p.requires_grad_(True) for n, p in low.named_parameters() if "lora_" in n]
    modes = []
    hooks = [model.register_forward_hook(lambda *_, name=name: modes.append((name, torch.is_grad_enabled())))
             for name, model in family.transformers.items()]
    run = dict(steps=4, guidance=6.0, **SIZE)  # timesteps 1000, 909.7 (high) | 717.3, 24.4 (low)
    latents = sample(family, ["a red ball"], generator=torch.Generator().manual_seed(0), grad_steps={3}, **run)
    assert modes == [("high", False), ("high", False), ("low", False), ("low", True)]
    family.decode(latents, first_n=1).mean().backward()
    assert all(p.grad is not None for p in lora_params) and sum(p.grad.abs().sum() for p in lora_params) > 0
    assert all(p.grad is None for p in family.transformers["high"].parameters())
    for p in lora_params:
        p.grad = None
    earlier = sample(family, ["a red ball"], generator=torch.Generator().manual_seed(0), grad_steps={2}, **run)
    family.decode(earlier, first_n=1).mean().backward()  # a chosen earlier low step, through the scheduler
    assert sum(p.grad.abs().sum() for p in lora_params) > 0
    high_step = sample(family, ["a red ball"], generator=torch.Generator().manual_seed(0), grad_steps={1}, **run)
    assert not high_step.requires_grad  # the high expert has nothing to train: a chosen high step builds no graph
    for hook in hooks:
        hook.remove()


def test_image_to_video_conditioning(family, t2v_files):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    latents = torch.zeros(1, 16, 3, 4, 4)
    condition = family.conditioning(latents, image)
    assert condition.shape == (1, 20, 3, 4, 4)
    assert (condition[:, :4, 0] == 1).all() and (condition[:, :4, 1:] == 0).all()  # keep-mask: pixel frame 0 only
    video = torch.zeros(1, 3, 9, 32, 32)
    video[:, :, 0] = image * 2 - 1  # generated frames are 0 (mid-grey)
    with torch.no_grad():
        encoded = family.vae.encode(video).latent_dist.mode()
    mean = torch.tensor(family.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(family.vae.config.latents_std).view(1, 16, 1, 1, 1)
    assert mean[0, 0, 0, 0, 0].item() == pytest.approx(-0.7571) and std[0, 0, 0, 0, 0].item() == pytest.approx(2.8184)
    assert torch.allclose(condition[:, 4:], (encoded - mean) / std, atol=1e-5)
    assert family.conditioning(latents, None).shape == (1, 20, 3, 4, 4) and family.conditioning(latents, None).abs().max() == 0
    inputs = []
    hook = family.transformer.register_forward_pre_hook(lambda _, args, kwargs: inputs.append(kwargs["hidden_states"]), with_kwargs=True)
    family.predict(latents + 1, torch.tensor(100.0), family.encode(["x"]), condition)
    hook.remove()
    assert torch.equal(inputs[0], torch.cat([latents + 1, condition], dim=1))  # [noisy 16, mask 4, masked video 16]
    with pytest.raises(ValueError, match="start image is 16x16"):
        family.conditioning(latents, torch.rand(1, 3, 16, 16))
    t2v = Wan22.load(**t2v_files, dtype=torch.float32)
    assert t2v.conditioning(latents, None).shape == (1, 0, 3, 4, 4)
    assert sample(t2v, ["x"], steps=1, **SIZE).shape == (1, 16, 3, 4, 4)
    with pytest.raises(ValueError, match="text-to-video experts"):
        t2v.conditioning(latents, image)


def _rewrite(source: Path, target: Path, change) -> Path:
    state = load_file(source)
    change(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, target)
    return target


def test_wrong_files(files, t2v_files, tmp_path):
    cog = write_cogvideox_fun(tmp_path / "cog") / "transformer" / "diffusion_pytorch_model.safetensors"
    cases = [
        (dict(high=cog), "is a CogVideoX or EasyAnimate transformer, not a Wan diffusion model"),
        (dict(low=files["vae"]), "wan_2.1_vae.safetensors is a Wan VAE, not a Wan diffusion model"),
        (dict(vae=files["text_encoder"]), "is a T5-family text encoder, not the Wan2.1 VAE"),
        (dict(text_encoder=files["high"]), "is a Wan diffusion model, not ComfyUI's UMT5 text encoder"),
        (dict(low=t2v_files["low"]), "are different models: in_channels 36 \\(high\\) vs 16 \\(low\\)"),
        (dict(high=tmp_path / "missing.safetensors"), "missing.safetensors does not exist"),
    ]

    def five_b(state):  # a Wan2.2 TI2V-5B expert predicts the 48 channels of the Wan2.2 VAE
        state["patch_embedding.weight"] = torch.zeros(DIM, 48, 1, 2, 2)
        state["head.head.weight"], state["head.head.bias"] = torch.zeros(48 * 4, DIM), torch.zeros(48 * 4)

    def wan22_vae(state):
        state["conv1.weight"], state["conv2.weight"] = torch.zeros(96, 96, 1, 1, 1), torch.zeros(48, 48, 1, 1, 1)

    def t5(state):  # a T5 v1.1 encoder (Flux, SD3) has the position bias in its first block only
        del state["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"]

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(files["high"].read_bytes()[: files["high"].stat().st_size // 2])
    cases += [
        (dict(high=_rewrite(files["high"], tmp_path / "5b.safetensors", five_b)), "predicts 48 latent channels \\(a Wan2.2 TI2V-5B"),
        (dict(vae=_rewrite(files["vae"], tmp_path / "wan2.2_vae.safetensors", wan22_vae)), "VAE with 48 latent channels"),
        (dict(text_encoder=_rewrite(files["text_encoder"], tmp_path / "t5.safetensors", t5)), "not UMT5"),
        (dict(text_encoder=_rewrite(files["text_encoder"], tmp_path / "umt5.safetensors", lambda s: s.pop("spiece_model"))),
         "has no embedded tokenizer"),
        (dict(high=truncated), "truncated.safetensors is not a readable safetensors file \\(truncated or corrupt"),
        (dict(low=_rewrite(files["low"], tmp_path / "quant.safetensors",
                           lambda s: s.update({"blocks.0.ffn.0.comfy_quant": torch.zeros(2, dtype=torch.uint8)}))), "comfy_quant"),
    ]
    for change, message in cases:
        with pytest.raises(ModelFileError, match=message):
            Wan22.load(**{**files, **change}, dtype=torch.float32)


def test_sizes_and_settings_are_checked(family, files):
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        sample(family, ["x"], frames=8, height=32, width=32, steps=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        sample(family, ["x"], frames=9, height=32, width=40, steps=1)
    with pytest.raises(ValueError, match="boundary"):
        Wan22.load(**files, boundary=1.5)


def _shifted(shift: float, sigma: np.ndarray) -> np.ndarray:
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_timesteps(steps: int, shift: float) -> np.ndarray:
    """Flow-matching timesteps computed here from sigma' = shift*sigma/(1+(shift-1)*sigma) (float64): the unshifted
    sigmas run evenly from 1 to the shifted sigma of the last training timestep (1/1000), then are shifted."""
    return 1000 * _shifted(shift, np.linspace(1.0, _shifted(shift, 1e-3), steps))


def test_default_shift_is_the_official_one_of_the_experts_loaded(family, t2v_files):
    t2v = Wan22.load(**t2v_files, dtype=torch.float32)
    # Wan2.2's wan_i2v_A14B.py / wan_t2v_A14B.py sample_shift, VideoX-Fun's wan_civitai_i2v.yaml / wan_civitai_t2v.yaml
    assert (family.shift, family.boundary) == (5.0, 0.900) and (t2v.shift, t2v.boundary) == (12.0, 0.875)
    for loaded in (family, t2v):
        expected = flow_timesteps(40, loaded.shift)
        assert np.allclose(loaded.schedule(40).timesteps.numpy(), expected, rtol=0, atol=1e-3)
        assert loaded.sampling_settings() == {"shift": loaded.shift, "boundary": loaded.boundary}
    assert sum(family.expert(t) == "high" for t in family.schedule(40).timesteps) == 14  # VideoX-Fun's 40 steps
    assert sum(t2v.expert(t) == "high" for t in t2v.schedule(40).timesteps) == 25


def test_training_shift_moves_the_schedule_and_the_expert_switch(files):
    from video_reward_lora.training.build import load_family
    from video_reward_lora.training.config import TrainConfig

    settings = {"family": "wan2.2", "model": {k: str(v) for k, v in files.items()}, "prompts": ["a red ball"],
                "frames": 9, "height": 32, "width": 32}
    switches = {}
    for shift in (None, 8.0, 12.0):
        config = TrainConfig.from_dict({**settings, "shift": shift})
        loaded = load_family(config, torch.float32, torch.device("cpu"))
        assert loaded.shift == (5.0 if shift is None else shift)
        timesteps = loaded.schedule(10).timesteps.numpy()
        expected = flow_timesteps(10, loaded.shift)
        assert np.allclose(timesteps, expected, rtol=0, atol=1e-3)
        switches[shift] = int((expected >= 900).sum())  # the first low-noise step, independently
        calls = []
        hooks = [m.register_forward_hook(lambda *_, name=name: calls.append(name)) for name, m in loaded.transformers.items()]
        sample(loaded, ["a red ball"], steps=10, guidance=1.0, generator=torch.Generator().manual_seed(0), **SIZE)
        for hook in hooks:
            hook.remove()
        assert calls == ["high"] * switches[shift] + ["low"] * (10 - switches[shift])
    assert switches == {None: 4, 8.0: 5, 12.0: 6}
    for bad, message in ((0.0, "shift must be positive"), (-2.0, "shift must be positive")):
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict({**settings, "shift": bad})
    with pytest.raises(ValueError, match="shift applies to Wan2.2 only"):
        TrainConfig.from_dict({**settings, "family": "cogvideox", "model": {"folder": "x"}, "shift": 8.0})
