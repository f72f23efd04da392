"""LoRA formats, family detection, conversions and their errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from video_reward_lora.training.lora.formats import FORMATS, METADATA_KEY, Lora, LoraFormatError, LoraModule, parse_lora, read_lora, write_lora
from video_reward_lora.training.lora.keymap import COGVIDEOX, EASYANIMATE, MODULES, WAN, detect_family, from_diffusers, to_diffusers

NAMES = {
    WAN: ["blocks.0.self_attn.q", "blocks.1.cross_attn.o", "text_embedding.0", "time_projection.1", "head.head"],
    COGVIDEOX: ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.0.proj", "norm_out.linear", "patch_embed.text_proj"],
    EASYANIMATE: ["transformer_blocks.0.attn2.to_out.0", "transformer_blocks.1.txt_ff.net.2", "text_proj_t5", "proj_out"],
}


def make_lora(family: str, names: list[str], rank: int = 4, alpha: float | None = 2.0, dtype=torch.bfloat16, seed: int = 0) -> Lora:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for i, name in enumerate(names):
        width_in, width_out = 8 + i, 6 + i
        modules[name] = LoraModule(
            torch.randn(rank, width_in, generator=generator).to(dtype),
            torch.randn(width_out, rank, generator=generator).to(dtype),
            alpha,
        )
    return Lora(family, modules, "videox")


def test_wan_names_agree_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    for original, diffusers_name in MODULES[WAN]:
        for n in ("0", "39"):
            o, d = original.replace("{n}", n), diffusers_name.replace("{n}", n)
            converted = list(convert_wan_transformer_to_diffusers({f"{o}.weight": torch.zeros(1)}))
            assert converted == [f"{d}.weight"], (o, converted)
            assert to_diffusers(WAN, o) == d and from_diffusers(WAN, d) == o


def test_published_key_names_are_written_exactly(tmp_path):
    path = write_lora(make_lora(WAN, NAMES[WAN]), tmp_path / "wan.safetensors", "videox")
    state = load_file(path)
    assert "lora_unet__blocks_0_self_attn_q.lora_down.weight" in state
    assert "lora_unet__time_projection_1.lora_up.weight" in state
    alpha = state["lora_unet__head_head.alpha"]
    assert alpha.shape == () and alpha.dtype == torch.bfloat16 and float(alpha) == 2.0
    assert len(state) == 3 * len(NAMES[WAN])


@pytest.mark.parametrize("family", [WAN, COGVIDEOX, EASYANIMATE])
@pytest.mark.parametrize("via", ["diffusers", "comfyui"])
def test_round_trip_is_lossless(tmp_path, family, via):
    source = write_lora(make_lora(family, NAMES[family], alpha=3.0), tmp_path / "a.safetensors", "videox")
    middle = read_lora(source)
    assert middle.family == family and middle.source_format == "videox"
    write_lora(middle, tmp_path / "b.safetensors", via)
    back = read_lora(tmp_path / "b.safetensors")
    assert back.family == family and back.source_format == via
    write_lora(back, tmp_path / "c.safetensors", "videox")
    first, last = load_file(source), load_file(tmp_path / "c.safetensors")
    assert first.keys() == last.keys()
    assert all(torch.equal(first[k], last[k]) and first[k].dtype == last[k].dtype for k in first)


def test_diffusers_format_keys_and_metadata(tmp_path):
    lora = make_lora(EASYANIMATE, NAMES[EASYANIMATE])
    lora.modules["proj_out"].alpha = 8.0
    path = write_lora(lora, tmp_path / "ea.safetensors", "diffusers")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
    assert "transformer.transformer_blocks.0.attn1.to_add_out.lora_A.weight" in keys
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 2.0
    assert meta["transformer.alpha_pattern"] == {"proj_out": 8.0}
    assert read_lora(path).modules["proj_out"].scale == 2.0


def test_missing_alpha_means_scale_one(tmp_path):
    state = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(4, 8),
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(8, 4)}
    module = parse_lora(state, {}, "x").modules["blocks.0.self_attn.q"]
    assert module.alpha is None and module.scale == 1.0
    assert torch.equal(module.delta(0.5), torch.full((8, 8), 2.0))


def test_families_are_recognised_from_their_names():
    assert detect_family(["blocks_3_cross_attn_k_img", "head_head"], flat=True)[0] == WAN
    assert detect_family(["blocks.3.attn2.add_k_proj", "proj_out"])[1]["blocks.3.attn2.add_k_proj"] == "blocks.3.cross_attn.k_img"
    assert detect_family(["transformer_blocks_2_attn1_to_out_0"], flat=True) == (COGVIDEOX, {"transformer_blocks_2_attn1_to_out_0": "transformer_blocks.2.attn1.to_out.0"})
    family, names = detect_family(["transformer_blocks.2.attn1.add_q_proj"])
    assert family == EASYANIMATE and names["transformer_blocks.2.attn1.add_q_proj"] == "transformer_blocks.2.attn2.to_q"


def test_bad_files_give_clear_errors(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.ones(2, 2)}, checkpoint)
    with pytest.raises(LoraFormatError, match="not a LoRA file: it holds model weights"):
        read_lora(checkpoint)
    lora = tmp_path / "rank.safetensors"
    save_file({"lora_unet__blocks_0_self_attn_q.lora_down.weight": torch.ones(4, 8),
               "lora_unet__blocks_0_self_attn_q.lora_up.weight": torch.ones(8, 2)}, lora)
    with pytest.raises(LoraFormatError, match=r"rank\.safetensors: rank mismatch between lora_unet__blocks_0_self_attn_q\.lora_down"
                                              r"\.weight \(rank 4, shape \[4, 8\]\) and lora_unet__blocks_0_self_attn_q\.lora_up\.weight "
                                              r"\(rank 2, shape \[8, 2\]\)"):
        read_lora(lora)
    half = tmp_path / "half.safetensors"
    save_file({"lora_unet__blocks_0_self_attn_q.lora_down.weight": torch.ones(4, 8)}, half)
    with pytest.raises(LoraFormatError, match="has no lora_up weight"):
        read_lora(half)
    good = write_lora(make_lora(WAN, NAMES[WAN]), tmp_path / "good.safetensors", "videox")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(LoraFormatError, match="truncated or corrupt"):
        read_lora(truncated)
    strange = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(8, 4)}, strange)
    with pytest.raises(LoraFormatError, match="belong to no supported model"):
        read_lora(strange)
    pickle = tmp_path / "lora.pt"
    pickle.write_bytes(b"x")
    with pytest.raises(LoraFormatError, match=".safetensors only"):
        read_lora(pickle)


STEM = "lora_unet__blocks_0_self_attn_q"
NAN, INF = float("nan"), float("inf")


def _with(tensor: torch.Tensor, index: tuple[int, int], value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


@pytest.mark.parametrize("down, up, alpha, message", [
    (torch.ones(4, 8), torch.ones(8, 4), torch.tensor([1.0, 2.0, 3.0]), rf"{STEM}\.alpha has shape \[3\]; an alpha is a single number"),
    (torch.ones(4, 8), torch.ones(8, 4), torch.tensor(INF), rf"{STEM}\.alpha is inf; the LoRA was refused"),
    (torch.ones(4, 8), torch.ones(8, 4), torch.tensor(NAN), rf"{STEM}\.alpha is nan; the LoRA was refused"),
    (torch.ones(0, 8), torch.ones(8, 0), torch.tensor(1.0), rf"{STEM}\.lora_down\.weight has rank 0 \(lora_down \[0, 8\], "
                                                            r"lora_up \[8, 0\]\); a LoRA needs rank 1 or more"),
    (torch.ones(0, 8), torch.ones(8, 0), None, rf"{STEM}\.lora_down\.weight has rank 0"),
    (torch.ones(4, 8), torch.ones(8, 3), torch.tensor(4.0), rf"rank mismatch between {STEM}\.lora_down\.weight \(rank 4"),
    (torch.ones(8), torch.ones(8, 4), torch.tensor(4.0), rf"{STEM}\.lora_down\.weight has shape \[8\]; a LoRA down weight is a matrix"),
    (torch.ones(4, 8), _with(torch.ones(8, 4), (2, 1), NAN), torch.tensor(4.0),
     rf"{STEM}\.lora_up\.weight holds 1 NaN or infinite values; the LoRA was refused"),
    (_with(_with(torch.ones(4, 8), (0, 0), INF), (3, 7), -INF), torch.ones(8, 4), torch.tensor(4.0),
     rf"{STEM}\.lora_down\.weight holds 2 NaN or infinite values; the LoRA was refused"),
    (torch.ones(4, 8).half(), _with(torch.ones(8, 4), (0, 0), 1e6).half(), None,  # 1e6 overflows fp16 to inf
     rf"{STEM}\.lora_up\.weight holds 1 NaN or infinite values"),
], ids=["alpha-of-3", "alpha-inf", "alpha-nan", "rank-0", "rank-0-no-alpha", "rank-mismatch", "down-1d", "up-nan",
        "down-inf", "up-fp16-overflow"])
def test_malformed_loras_are_refused_naming_file_and_key(tmp_path, down, up, alpha, message):
    tensors = {f"{STEM}.lora_down.weight": down, f"{STEM}.lora_up.weight": up}
    if alpha is not None:
        tensors[f"{STEM}.alpha"] = alpha
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(LoraFormatError, match=rf"^bad\.safetensors: {message}"):
        read_lora(tmp_path / "bad.safetensors")


def test_non_finite_alpha_in_diffusers_metadata_is_refused(tmp_path):
    path = write_lora(make_lora(WAN, NAMES[WAN][:1]), tmp_path / "peft.safetensors", "diffusers")
    tensors, metadata = load_file(path), json.loads(read_metadata(path)[METADATA_KEY])
    metadata["transformer.lora_alpha"] = NAN
    save_file(tensors, path, metadata={METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(LoraFormatError, match=r"^peft\.safetensors: the lora_adapter_metadata header gives transformer\.blocks\.0"
                                              r"\.attn1\.to_q a non-finite alpha \(nan\)"):
        read_lora(path)


def read_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_unknown_output_format(tmp_path):
    with pytest.raises(ValueError, match="unknown LoRA format"):
        write_lora(make_lora(WAN, NAMES[WAN]), tmp_path / "x.safetensors", "kohya")
    assert FORMATS == ("videox", "comfyui", "diffusers")


def test_non_numeric_alpha_in_diffusers_metadata_is_refused(tmp_path):
    """A header alpha that is no number is a LoraFormatError naming the file (it was a bare ValueError)."""
    path = write_lora(make_lora(WAN, NAMES[WAN][:1]), tmp_path / "text_alpha.safetensors", "diffusers")
    tensors, metadata = load_file(path), json.loads(read_metadata(path)[METADATA_KEY])
    metadata["transformer.lora_alpha"] = "sixty-four"
    save_file(tensors, path, metadata={METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(LoraFormatError, match=r"text_alpha\.safetensors: .*numeric alphas"):
        read_lora(path)
