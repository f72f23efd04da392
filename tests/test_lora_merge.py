"""Merging: live peft adapters on tiny diffusers models and baking checkpoints, against W + s*(alpha/r)*up@down."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from video_reward_lora.training.lora import adapters
from video_reward_lora.training.lora.formats import Lora, LoraModule, write_lora
from video_reward_lora.training.lora.keymap import COGVIDEOX, EASYANIMATE, WAN, from_diffusers, to_diffusers
from video_reward_lora.training.lora.merge import BakeError, bake, bake_shards, shard_index

# float32 merges agree to rounding; bf16 weights hold ~3 significant digits, so one bf16 step of the largest entry
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}


def tiny_model(family: str, dtype: torch.dtype = torch.float32):
    from diffusers import CogVideoXTransformer3DModel, EasyAnimateTransformer3DModel, WanTransformer3DModel

    torch.manual_seed(0)
    if family == COGVIDEOX:
        model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=33, out_channels=16,
                                            num_layers=2, text_embed_dim=16, time_embed_dim=8, sample_width=8, sample_height=8, sample_frames=5)
    elif family == EASYANIMATE:
        model = EasyAnimateTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=33, out_channels=16,
                                              patch_size=2, num_layers=2, mmdit_layers=2, text_embed_dim=16, text_embed_dim_t5=12, time_embed_dim=8)
    else:
        model = WanTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=36, out_channels=16,
                                      text_dim=16, freq_dim=8, ffn_dim=32, num_layers=2)
    return model.to(dtype).eval()


def lora_for(model, family: str, rank: int = 4, alpha: float = 2.0, skip: str = "", seed: int = 1) -> Lora:
    """A random LoRA on every LoRA-able Linear of `model` (original names), as the published files cover."""
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, layer in model.named_modules():
        original = from_diffusers(family, name)
        if isinstance(layer, torch.nn.Linear) and original and not (skip and skip in original):
            modules[original] = LoraModule(
                torch.randn(rank, layer.in_features, generator=generator) * 0.3,
                torch.randn(layer.out_features, rank, generator=generator) * 0.3,
                alpha,
            )
    return Lora(family, modules, "videox")


def expected_weights(model, lora: Lora, strength: float) -> dict[str, torch.Tensor]:
    """The independent formula, in float64."""
    out = {}
    for name, module in lora.modules.items():
        weight = dict(model.named_modules())[to_diffusers(lora.family, name)].weight.double()
        delta = (module.up.double() @ module.down.double()) * (module.alpha / module.down.shape[0]) * strength
        out[name] = weight + delta
    return out


@pytest.mark.parametrize("family", [COGVIDEOX, EASYANIMATE, WAN])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attached_lora_merges_to_formula_and_detaches_exactly(family, dtype):
    model = tiny_model(family, dtype)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = lora_for(model, family, skip="ffn" if family == WAN else "")
    expected = expected_weights(model, lora, 0.7)
    assert adapters.attach(model, lora, family, strength=0.3) == len(lora.modules)
    adapters.set_strength(model, "reward", 1.5)
    adapters.set_strength(model, "reward", 0.7)
    backups = adapters.merge(model, "reward")
    layers = dict(model.named_modules())
    for name, weight in expected.items():
        merged = layers[to_diffusers(family, name)].base_layer.weight.double()
        scale = weight.abs().max().item()
        assert (merged - weight).abs().max() <= TOLERANCE[dtype] * max(scale, 1.0), name
    adapters.unmerge(model, "reward", backups)
    adapters.detach(model, "reward")
    restored = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}
    assert all(torch.equal(restored[k], v) for k, v in base.items())


def test_lora_output_changes_with_strength_and_returns_to_base():
    model = tiny_model(COGVIDEOX)
    hidden = torch.randn(1, 2, 33, 8, 8)
    text = torch.randn(1, 226, 16)
    t = torch.tensor([500])
    with torch.no_grad():
        base = model(hidden, text, t, return_dict=False)[0]
        adapters.attach(model, lora_for(model, COGVIDEOX), COGVIDEOX, strength=0.7)
        on = model(hidden, text, t, return_dict=False)[0]
        adapters.set_strength(model, "reward", 0.0)
        off = model(hidden, text, t, return_dict=False)[0]
    assert not torch.allclose(on, base) and torch.equal(off, base)


def test_lora_for_another_family_is_refused():
    model = tiny_model(WAN)
    cog = lora_for(tiny_model(COGVIDEOX), COGVIDEOX)
    with pytest.raises(ValueError, match="CogVideoX-Fun LoRA; the model is Wan"):
        adapters.attach(model, cog, WAN)
    with pytest.raises(ValueError, match="CogVideoX-Fun LoRA; the model is EasyAnimate"):
        adapters.attach(tiny_model(EASYANIMATE), cog, EASYANIMATE)  # patch_embed.text_proj is CogVideoX's own
    blocks_only = Lora(COGVIDEOX, {k: v for k, v in cog.modules.items() if k.startswith("transformer_blocks")})
    assert adapters.attach(tiny_model(EASYANIMATE), blocks_only, EASYANIMATE) == len(blocks_only.modules)


def test_diffusers_reads_our_export_with_the_same_scale(tmp_path):
    from diffusers import WanTransformer3DModel

    model = tiny_model(WAN)
    lora = lora_for(model, WAN, alpha=2.0, skip="ffn")
    lora.modules["head.head"].alpha = 1.0
    write_lora(lora, tmp_path / "pytorch_lora_weights.safetensors", "diffusers")
    expected = expected_weights(model, lora, 1.0)
    assert isinstance(model, WanTransformer3DModel)
    model.load_lora_adapter(str(tmp_path), weight_name="pytorch_lora_weights.safetensors", prefix="transformer", adapter_name="x")
    model.fuse_lora(lora_scale=1.0, adapter_names=["x"])
    layers = dict(model.named_modules())
    for name, weight in expected.items():
        assert torch.allclose(layers[to_diffusers(WAN, name)].base_layer.weight.double(), weight, atol=1e-5), name


def _wan_checkpoint(tmp_path, dtype, scaled: bool):
    """A Wan-style checkpoint (original key names) of two blocks' self-attention plus the head."""
    torch.manual_seed(2)
    state, names = {}, ["blocks.0.self_attn.q", "blocks.1.self_attn.o", "head.head"]
    for name in names:
        weight = torch.randn(16, 12)
        if scaled:
            scale = weight.abs().max() / torch.finfo(dtype).max
            state[f"{name}.scale_weight"] = scale.reshape(1).float()
            state[f"{name}.weight"] = (weight / scale).to(dtype)
        else:
            state[f"{name}.weight"] = weight.to(dtype)
        state[f"{name}.bias"] = torch.randn(16).to(torch.float32)
    state["blocks.0.modulation"] = torch.randn(1, 6, 12)
    path = tmp_path / "wan.safetensors"
    save_file(state, path, metadata={"note": "tiny"})
    generator = torch.Generator().manual_seed(3)
    lora = Lora(WAN, {n: LoraModule(torch.randn(4, 12, generator=generator), torch.randn(16, 4, generator=generator), 2.0) for n in names})
    return path, lora


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bake_matches_formula_and_keeps_layout(tmp_path, dtype):
    path, lora = _wan_checkpoint(tmp_path, dtype, scaled=False)
    report = bake(path, lora, 0.7, tmp_path / "out" / "baked.safetensors")
    source, baked = load_file(path), load_file(tmp_path / "out" / "baked.safetensors")
    assert list(baked) == list(source) and all(baked[k].dtype == source[k].dtype for k in source)
    with safe_open(str(tmp_path / "out" / "baked.safetensors"), "pt") as f:
        assert f.metadata() == {"note": "tiny"}
    for name, module in lora.modules.items():
        expected = source[f"{name}.weight"].double() + 0.7 * 0.5 * (module.up.double() @ module.down.double())
        assert (baked[f"{name}.weight"].double() - expected).abs().max() <= TOLERANCE[dtype] * expected.abs().max()
    assert torch.equal(baked["blocks.0.modulation"], source["blocks.0.modulation"])
    assert report.merged_modules == 3 and report.fp8_modules == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["baked.safetensors"]


def test_bake_scaled_fp8_merges_in_float32_and_reports_the_loss(tmp_path):
    path, lora = _wan_checkpoint(tmp_path, torch.float8_e4m3fn, scaled=True)
    report = bake(path, lora, 0.7, tmp_path / "baked.safetensors")
    source, baked = load_file(path), load_file(tmp_path / "baked.safetensors")
    for name, module in lora.modules.items():
        exact = source[f"{name}.weight"].double() * source[f"{name}.scale_weight"].double()
        exact += 0.7 * 0.5 * (module.up.double() @ module.down.double())
        assert baked[f"{name}.weight"].dtype == torch.float8_e4m3fn
        restored = baked[f"{name}.weight"].double() * baked[f"{name}.scale_weight"].double()
        # e4m3 keeps 3 mantissa bits: each entry is within 1/16 of its magnitude (plus the scale's resolution)
        assert ((restored - exact).abs() <= exact.abs() / 16 + 1e-3 * exact.abs().max()).all()
    assert report.fp8_modules == 3 and 0 < report.worst_fp8_error < 1
    assert "re-quantised" in report.describe()


def test_bake_refuses_lora_that_does_not_fit(tmp_path):
    path, _ = _wan_checkpoint(tmp_path, torch.float32, scaled=False)
    cog = Lora(COGVIDEOX, {"transformer_blocks.0.attn1.to_q": LoraModule(torch.ones(4, 12), torch.ones(16, 4), 2.0)})
    with pytest.raises(BakeError, match="have no weight in the checkpoint.*CogVideoX-Fun checkpoint"):
        bake(path, cog, 1.0, tmp_path / "out.safetensors")
    wrong = Lora(WAN, {"head.head": LoraModule(torch.ones(4, 24), torch.ones(16, 4), 2.0)})
    with pytest.raises(BakeError, match="another model size"):
        bake(path, wrong, 1.0, tmp_path / "out.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BakeError, match="truncated or corrupt"):
        bake(truncated, Lora(WAN, {"head.head": LoraModule(torch.ones(4, 12), torch.ones(16, 4), 2.0)}), 1.0, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("family", [COGVIDEOX, EASYANIMATE])
def test_bake_diffusers_named_checkpoints(tmp_path, family):
    """CogVideoX-Fun and EasyAnimate transformer files use diffusers names; the LoRA's original names are mapped."""
    model = tiny_model(family)
    lora = lora_for(model, family)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    report = bake(tmp_path / "diffusion_pytorch_model.safetensors", lora, 0.7, tmp_path / "baked.safetensors")
    baked = load_file(tmp_path / "baked.safetensors")
    assert report.merged_modules == len(lora.modules) and baked.keys() == state.keys()
    for name, module in lora.modules.items():
        key = f"{to_diffusers(family, name)}.weight"
        expected = state[key].double() + 0.7 * 0.5 * (module.up.double() @ module.down.double())
        assert (baked[key].double() - expected).abs().max() <= TOLERANCE[torch.bfloat16] * expected.abs().max(), name


def test_bake_sharded_checkpoint(tmp_path):
    model = tiny_model(COGVIDEOX)
    lora = lora_for(model, COGVIDEOX)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    keys = sorted(state)
    shards = {"m-00001-of-00002.safetensors": keys[: len(keys) // 2], "m-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    (tmp_path / "src").mkdir()
    for shard, part in shards.items():
        save_file({k: state[k] for k in part}, tmp_path / "src" / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, part in shards.items() for k in part}}
    (tmp_path / "src" / "m.safetensors.index.json").write_text(json.dumps(index))
    found = shard_index(tmp_path / "src" / "m-00002-of-00002.safetensors")
    assert found == tmp_path / "src" / "m.safetensors.index.json"
    report = bake_shards(found, lora, 0.7, tmp_path / "out" / "baked")
    assert report.merged_modules == len(lora.modules)
    assert sorted(p.name for p in (tmp_path / "out" / "baked").iterdir()) == ["m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors", "m.safetensors.index.json"]
    baked = {**load_file(tmp_path / "out" / "baked" / "m-00001-of-00002.safetensors"), **load_file(tmp_path / "out" / "baked" / "m-00002-of-00002.safetensors")}
    for name, module in lora.modules.items():
        key = f"{to_diffusers(COGVIDEOX, name)}.weight"
        expected = state[key].double() + 0.35 * (module.up.double() @ module.down.double())
        assert (baked[key].double() - expected).abs().max() <= TOLERANCE[torch.bfloat16] * expected.abs().max()
    wan = Lora(WAN, {"blocks.0.self_attn.q": LoraModule(torch.ones(4, 12), torch.ones(16, 4), 2.0)})
    with pytest.raises(BakeError, match="have no weight"):
        bake_shards(found, wan, 1.0, tmp_path / "out" / "refused")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["baked"]
