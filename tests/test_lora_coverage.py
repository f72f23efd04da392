"""Coverage: every key of each published reward LoRA maps onto its full-size target model.

The published files are not downloaded; their key sets are rebuilt from the full-size architectures (built on the
meta device with the upstream configs) by the published naming rule: every Linear under the transformer, named
`lora_unet__` + its original module path with `.` -> `_`, with `.lora_down.weight`, `.lora_up.weight` and `.alpha`;
the Wan2.2 reward LoRAs skip `ffn`. Original names: CogVideoX-Fun = diffusers; EasyAnimate = diffusers with the text
stream under `attn2` (the six renames, undone here independently of the pack's tables); Wan = the official checkpoint
names (checked against diffusers' own converter in test_lora_formats).
"""
from __future__ import annotations

import pytest
import torch

from video_reward_lora.training.lora.formats import parse_lora
from video_reward_lora.training.lora.keymap import COGVIDEOX, EASYANIMATE, WAN, from_diffusers, to_diffusers

_COG = dict(attention_head_dim=64, out_channels=16, time_embed_dim=512, text_embed_dim=4096, sample_width=90,
            sample_height=60, sample_frames=49, patch_size=2, max_text_seq_length=226, in_channels=33)
_EA = dict(num_attention_heads=48, attention_head_dim=64, in_channels=33, out_channels=16, patch_size=2, time_embed_dim=512,
           text_embed_dim=1024, text_embed_dim_t5=2048, time_position_encoding_type="3d_rope", after_norm=False,
           resize_inpaint_mask_directly=True)
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None)
PUBLISHED = {
    "CogVideoX-Fun-V1.1-2b-InP-HPS2.1": (COGVIDEOX, dict(_COG, num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False), 245),
    "CogVideoX-Fun-V1.1-5b-InP-HPS2.1": (COGVIDEOX, dict(_COG, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True), 341),
    "EasyAnimateV5-7b-zh-InP-HPS2.1": (EASYANIMATE, dict(_EA, num_layers=36, mmdit_layers=18), 402),
    "EasyAnimateV5-12b-zh-InP-HPS2.1": (EASYANIMATE, dict(_EA, num_layers=48, mmdit_layers=48), 678),
    "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1": (WAN, _WAN, 326),
    "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1": (WAN, _WAN, 326),
}
EA_RENAMES = {".attn1.add_q_proj": ".attn2.to_q", ".attn1.add_k_proj": ".attn2.to_k", ".attn1.add_v_proj": ".attn2.to_v",
              ".attn1.to_add_out": ".attn2.to_out.0"}


def build(family: str, config: dict):
    from diffusers import CogVideoXTransformer3DModel, EasyAnimateTransformer3DModel, WanTransformer3DModel

    cls = {COGVIDEOX: CogVideoXTransformer3DModel, EASYANIMATE: EasyAnimateTransformer3DModel, WAN: WanTransformer3DModel}[family]
    with torch.device("meta"):
        return cls(**config)


def original_name(family: str, name: str) -> str:
    if family == EASYANIMATE:
        for new, old in EA_RENAMES.items():
            name = name.replace(new, old)
    if family == WAN:
        return from_diffusers(WAN, name)
    return name


def published_keys(family: str, model) -> dict[str, torch.Tensor]:
    keys = {}
    for name, layer in model.named_modules():
        is_1x1 = isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1)
        if not (isinstance(layer, torch.nn.Linear) or is_1x1):
            continue
        original = original_name(family, name)
        if family == WAN and ".ffn." in original:
            continue
        stem = "lora_unet__" + original.replace(".", "_")
        # full-size shapes over one stored zero (expanded views): the reader checks values, so no meta tensors
        keys[f"{stem}.lora_down.weight"] = torch.zeros(()).expand(128, layer.in_features)
        keys[f"{stem}.lora_up.weight"] = torch.zeros(()).expand(layer.out_features, 128)
        keys[f"{stem}.alpha"] = torch.tensor(64.0)
    return keys


@pytest.mark.parametrize("published", list(PUBLISHED))
def test_every_published_key_maps_onto_the_model(published):
    family, config, expected_modules = PUBLISHED[published]
    model = build(family, config)
    keys = published_keys(family, model)
    lora = parse_lora(keys, {}, published)
    assert lora.family == family
    assert len(lora.modules) * 3 == len(keys)
    assert len(lora.modules) == expected_modules
    layers = dict(model.named_modules())
    for name, module in lora.modules.items():
        layer = layers[to_diffusers(family, name)]
        assert (layer.out_features, layer.in_features) == (module.up.shape[0], module.down.shape[1]), name
        assert module.scale == 0.5
    if family == WAN:
        assert not any(".ffn." in n for n in lora.modules)
        assert "blocks.39.cross_attn.k" in lora.modules and "time_projection.1" in lora.modules
