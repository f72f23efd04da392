"""HPS v2 / v2.1: an open_clip ViT-H-14 checkpoint, renamed key by key onto transformers' CLIPModel."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from .clip_arch import layer_count, load_tokenizer, vit_h_config
from .clip_similarity import ClipSimilarityReward
from .files import ModelFileError, read_weights
from .hf_load import load_strict
from .preprocess import Preprocess

_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP_RENAMES = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "logit_scale": "logit_scale",
    **{f"visual.ln_pre.{p}": f"vision_model.pre_layrnorm.{p}" for p in ("weight", "bias")},
    **{f"visual.ln_post.{p}": f"vision_model.post_layernorm.{p}" for p in ("weight", "bias")},
    **{f"ln_final.{p}": f"text_model.final_layer_norm.{p}" for p in ("weight", "bias")},
}
# open_clip multiplies by these matrices (x @ proj); transformers' Linear stores the transpose.
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}


def unwrap_state_dict(loaded: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The open_clip state dict inside an HPS checkpoint (`{'state_dict': ...}`, optional `module.` prefix)."""
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{name}: 'state_dict' is not a mapping of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        if any(k.startswith(("text_model.", "vision_model.", "model.text_model.")) for k in state):
            kind = "a Hugging Face CLIP checkpoint (PickScore/MPS style)"
        elif any(k.startswith(("layers.", "scoring_head.")) for k in state):
            kind = "an aesthetic-predictor head"
        else:
            kind = "not an open_clip CLIP checkpoint"
        raise ModelFileError(f"{name} is {kind}; HPS needs the open_clip ViT-H-14 checkpoint HPS_v2(.1)_compressed.pt")
    return state


def open_clip_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPModel weights from open_clip ViT weights. Every source key is used exactly once."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        try:
            return state.pop(key)
        except KeyError:
            raise ModelFileError(f"the HPS checkpoint is missing the open_clip key '{key}'") from None

    for src, dst in (("visual.transformer.resblocks.", "vision_model.encoder.layers."), ("transformer.resblocks.", "text_model.encoder.layers.")):
        for i in range(layer_count(state, src)):
            s, d = f"{src}{i}.", f"{dst}{i}."
            for part in ("weight", "bias"):
                q, k, v = take(f"{s}attn.in_proj_{part}").chunk(3)
                out.update({f"{d}self_attn.q_proj.{part}": q, f"{d}self_attn.k_proj.{part}": k, f"{d}self_attn.v_proj.{part}": v})
                for old, new in _BLOCK_RENAMES.items():
                    out[f"{d}{new}.{part}"] = take(f"{s}{old}.{part}")
    for old, new in _TOP_RENAMES.items():
        out[new] = take(old)
    for old, new in _TRANSPOSED.items():
        out[new] = take(old).t().contiguous()
    if state:
        raise ModelFileError(f"the HPS checkpoint has keys an open_clip ViT does not have: {sorted(state)[:5]}")
    return out


def load_hps(checkpoint: Path, tokenizer_folder: Path, dtype: torch.dtype, label: str) -> ClipSimilarityReward:
    if checkpoint.is_dir():
        raise ModelFileError(
            f"{checkpoint.name} is a folder; {label} needs the open_clip checkpoint file "
            "(HPS_v2_compressed.pt or HPS_v2.1_compressed.pt)"
        )
    from transformers import CLIPModel

    hf_state = open_clip_to_hf(unwrap_state_dict(read_weights(checkpoint), checkpoint.name))
    tokenizer = load_tokenizer(tokenizer_folder)
    config = vit_h_config(hf_state, tokenizer)
    clip = load_strict(CLIPModel, None, dtype, label, config=config, state_dict=hf_state)
    size = config.vision_config.image_size
    return ClipSimilarityReward(clip, tokenizer, Preprocess("letterbox", size), label, use_logit_scale=False)
