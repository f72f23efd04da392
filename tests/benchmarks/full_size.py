"""Full-size models with random weights for GPU benchmarks: a tiny published-format family whose transformer(s)
and VAE are swapped for the real architectures, with random text embeddings of the real widths (no hub needed)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

TRANSFORMERS = {
    "cogvideox": ("CogVideoXTransformer3DModel", dict(
        num_attention_heads=30, attention_head_dim=64, in_channels=33, out_channels=16, num_layers=30,
        text_embed_dim=4096, time_embed_dim=512, use_rotary_positional_embeddings=False)),
    "easyanimate": ("EasyAnimateTransformer3DModel", dict(
        num_attention_heads=48, attention_head_dim=64, in_channels=33, out_channels=16, patch_size=2, num_layers=36,
        mmdit_layers=18, text_embed_dim=1024, text_embed_dim_t5=2048, time_embed_dim=512)),
    "wan2.2": ("WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6)),
}
VAES = {"cogvideox": "AutoencoderKLCogVideoX", "easyanimate": "AutoencoderKLMagvit", "wan2.2": "AutoencoderKLWan"}
LABELS = {"cogvideox": "CogVideoX-Fun 2B", "easyanimate": "EasyAnimate V5 7B", "wan2.2": "Wan2.2 A14B (each expert)"}


def _text_width(family_key: str, tensor_name: str) -> int:
    config = TRANSFORMERS[family_key][1]
    if family_key == "wan2.2":
        return config["text_dim"]
    return config["text_embed_dim_t5"] if tensor_name.endswith("t5") else config["text_embed_dim"]


def build_transformer(family_key: str, **overrides: Any) -> nn.Module:
    """The family's full-size transformer with random weights (float32, on the current default device), its
    configuration updated with `overrides` (e.g. the layer counts of another model size)."""
    import diffusers

    name, config = TRANSFORMERS[family_key]
    return getattr(diffusers, name)(**{**config, **overrides}).eval().requires_grad_(False)


def build_vae(family_key: str) -> nn.Module:
    """The family's VAE with its default (published) configuration and random weights."""
    import diffusers

    return getattr(diffusers, VAES[family_key])().eval().requires_grad_(False)


def full_size_text(family, family_key: str, prompts: list[str], generator: torch.Generator) -> None:
    """Cache random text embeddings of the real widths for `prompts` (encoded once by the tiny text encoders for
    their lengths and masks), then release the tiny text encoders."""
    for prompt in prompts:
        family.encode([prompt])
        cached = family._text_cache[prompt].tensors
        family._text_cache[prompt].tensors = {
            k: torch.randn(*v.shape[:2], _text_width(family_key, k), generator=generator) if v.is_floating_point() else v
            for k, v in cached.items()}
    family.release_text_encoders()


def make_full_size(family, family_key: str, prompts: list[str], generator: torch.Generator) -> None:
    """Swap in full-size random transformer(s) and VAE (on the family's device and dtype) and cache random text
    embeddings of the real widths for `prompts`, then release the tiny text encoders."""
    device, dtype = family.device, family.dtype
    full_size_text(family, family_key, prompts, generator)
    for expert in family.transformers:
        with torch.device(device):
            full = build_transformer(family_key).to(dtype)
        if expert == "high":
            family.high = full.to("cpu") if getattr(family, "offload_idle", False) else full
        else:
            family.transformer = full
    with torch.device(device):
        family.vae = build_vae(family_key).to(dtype)
