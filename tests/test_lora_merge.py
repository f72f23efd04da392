"""Merging: live peft adapters on tiny diffusers models and baking checkpoints, against W + s*(alpha/r)*up@down."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from video_reward_lora.training.families.tiny_wan import SCALE_SHAPES
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


def _per_row(scale: torch.Tensor) -> torch.Tensor:
    """A scale_weight in float64, shaped to multiply a [16, 12] weight: one value, or one per row."""
    return scale.double().reshape(-1, 1) if scale.numel() > 1 else scale.double().reshape(())


def _wan_checkpoint(tmp_path, dtype, scaled: bool, scales: str = "0-dim"):
    """A Wan-style checkpoint (original key names) of two blocks' self-attention plus the head; scaled fp8 as ComfyUI
    writes it: the `scaled_fp8` marker and, per weight, a float32 `scale_weight` (0-dim by default, else of the
    SCALE_SHAPES form `scales`) mapping the largest |value| it covers to fp8's max, and a 0-dim `scale_input` of 1."""
    torch.manual_seed(2)
    state, names = {}, ["blocks.0.self_attn.q", "blocks.1.self_attn.o", "head.head"]
    if scaled:
        state["scaled_fp8"] = torch.empty(0, dtype=dtype)
    for name in names:
        weight = torch.randn(16, 12)
        if scaled:
            shape = SCALE_SHAPES[scales](16)
            peak = weight.abs().amax(1) if torch.Size(shape).numel() > 1 else weight.abs().max()
            scale = (peak / torch.finfo(dtype).max).reshape(shape)
            state[f"{name}.scale_weight"] = scale
            state[f"{name}.scale_input"] = torch.ones(())
            state[f"{name}.weight"] = (weight / _per_row(scale).float()).to(dtype)
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


@pytest.mark.parametrize("scales", list(SCALE_SHAPES))
def test_bake_scaled_fp8_merges_in_float32_and_reports_the_loss(tmp_path, scales):
    path, lora = _wan_checkpoint(tmp_path, torch.float8_e4m3fn, scaled=True, scales=scales)
    report = bake(path, lora, 0.7, tmp_path / "baked.safetensors")
    source, baked = load_file(path), load_file(tmp_path / "baked.safetensors")
    assert list(baked) == list(source)
    assert all(baked[k].dtype == source[k].dtype and baked[k].shape == source[k].shape for k in source)
    untouched = [k for k in source if not k.endswith((".weight", ".scale_weight"))]  # marker, 3 scale_input, 3 bias, modulation
    assert len(untouched) == 8 and all(torch.equal(baked[k], source[k]) for k in untouched)
    for name, module in lora.modules.items():
        # the independent formula in float64: W·s + strength·(alpha/r)·up@down
        exact = source[f"{name}.weight"].double() * _per_row(source[f"{name}.scale_weight"])
        exact += 0.7 * (2.0 / 4) * (module.up.double() @ module.down.double())
        scale = _per_row(baked[f"{name}.scale_weight"])
        peak = exact.abs().amax(1, keepdim=True) if scale.numel() > 1 else exact.abs().max()
        # the fresh scale maps the largest |value| it covers to e4m3's max (448), to float32's rounding
        assert torch.allclose(scale, peak / 448, rtol=1e-5, atol=0)
        restored = baked[f"{name}.weight"].double() * scale
        # re-quantised to nearest: e4m3 keeps 3 mantissa bits, so a normal entry is within 1/16 of its magnitude and a
        # subnormal one within half its step (scale / 1024); 1e-5 of the largest entry covers the float32 merge
        assert ((restored - exact).abs() <= exact.abs() / 16 + scale / 1024 + 1e-5 * exact.abs().max()).all()
    assert report.fp8_modules == 3 and 0 < report.worst_fp8_error < 1
    assert "re-quantised" in report.describe()


def test_bake_refuses_a_scale_of_another_size(tmp_path):
    path, lora = _wan_checkpoint(tmp_path, torch.float8_e4m3fn, scaled=True)
    state = load_file(path)
    state["head.head.scale_weight"] = torch.ones(3)
    save_file(state, path)
    with pytest.raises(BakeError, match=r"wan\.safetensors: head\.head\.scale_weight has shape \[3\]: a scale_weight holds "
                                        r"one value or one per output row \(16 for a weight of shape \[16, 12\]\)"):
        bake(path, lora, 0.7, tmp_path / "baked.safetensors")
    assert not (tmp_path / "baked.safetensors").exists()


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


def _sharded(tmp_path):
    """(state, LoRA) of a tiny CogVideoX-Fun model written as two bf16 shards and their index under tmp_path/src."""
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
    return state, lora


def test_bake_sharded_checkpoint(tmp_path):
    state, lora = _sharded(tmp_path)
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


def test_sharded_bake_replaces_an_existing_folder_only_with_overwrite(tmp_path):
    _, lora = _sharded(tmp_path)
    index = tmp_path / "src" / "m.safetensors.index.json"
    (tmp_path / "out" / "baked").mkdir(parents=True)
    (tmp_path / "out" / "baked" / "mine.txt").write_text("keep")
    with pytest.raises(BakeError, match=r"baked already exists; choose another name or allow overwriting"):
        bake_shards(index, lora, 0.7, tmp_path / "out" / "baked")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["baked"]
    assert [p.name for p in (tmp_path / "out" / "baked").iterdir()] == ["mine.txt"]
    bake_shards(index, lora, 0.7, tmp_path / "out" / "baked", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out" / "baked").iterdir()) == [
        "m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors", "m.safetensors.index.json"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["baked"]
    (tmp_path / "out" / "file").write_text("x")
    with pytest.raises(BakeError, match="file is a file; a sharded checkpoint is baked into a folder"):
        bake_shards(index, lora, 0.7, tmp_path / "out" / "file", overwrite=True)


def test_baked_files_get_the_usual_mode(tmp_path):
    """0o644 under umask 022, like every other output (not mkstemp's 0o600); folders 0o755."""
    path, lora = _wan_checkpoint(tmp_path, torch.float32, scaled=False)
    _, sharded_lora = _sharded(tmp_path)
    previous = os.umask(0o022)
    try:
        bake(path, lora, 0.7, tmp_path / "out" / "baked.safetensors")
        bake_shards(tmp_path / "src" / "m.safetensors.index.json", sharded_lora, 0.7, tmp_path / "out" / "shards")
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "baked.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out" / "shards").stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out" / "shards").iterdir()} == {
        "m-00001-of-00002.safetensors": 0o644, "m-00002-of-00002.safetensors": 0o644, "m.safetensors.index.json": 0o644}
