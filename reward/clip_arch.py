"""CLIP pieces shared by the CLIP-based rewards: the tokenizer, and a transformers config read off weight shapes."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from .files import ModelFileError

CONTEXT_LENGTH = 77
# open_clip's ViT-H-14 (HPS, and the laion CLIP-H under PickScore and MPS) splits its towers into heads of these
# widths: 1280/80 = 16 vision heads, 1024/64 = 16 text heads. Head counts are not visible in weight shapes.
VISION_HEAD_WIDTH = 80
TEXT_HEAD_WIDTH = 64
LAYER_NORM_EPS = 1e-5


def load_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer from a Hugging Face tokenizer folder (vocab.json + merges.txt or tokenizer.json)."""
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a folder; a CLIP tokenizer folder (vocab.json, merges.txt) is needed")
    has_files = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    if not has_files:
        raise ModelFileError(
            f"{folder.name} has no CLIP tokenizer files (tokenizer.json, or vocab.json and merges.txt)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"the CLIP tokenizer in {folder.name} could not be loaded: {err}") from err


def tokenize(tokenizer: Any, prompt: str, device: torch.device) -> torch.Tensor:
    """Token ids `[1,77]`: start, text, end, then the tokenizer's padding (truncated keeping the end token)."""
    ids = tokenizer(
        prompt, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


def layer_count(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def vit_h_config(state: Mapping[str, torch.Tensor], tokenizer: Any, prefix: str = ""):
    """A transformers CLIPConfig for transformers-named CLIP weights, with open_clip ViT-H-14's head widths."""
    from transformers import CLIPConfig

    def shape(key: str) -> torch.Size:
        try:
            return state[prefix + key].shape
        except KeyError:
            raise ModelFileError(f"the CLIP weights have no '{prefix + key}'") from None

    text_width = shape("text_model.embeddings.token_embedding.weight")[1]
    vision_width = shape("vision_model.embeddings.patch_embedding.weight")[0]
    patch = shape("vision_model.embeddings.patch_embedding.weight")[-1]
    grid = round((shape("vision_model.embeddings.position_embedding.weight")[0] - 1) ** 0.5)
    return CLIPConfig(
        text_config=dict(
            vocab_size=shape("text_model.embeddings.token_embedding.weight")[0],
            hidden_size=text_width,
            intermediate_size=shape("text_model.encoder.layers.0.mlp.fc1.weight")[0],
            num_attention_heads=text_width // TEXT_HEAD_WIDTH,
            num_hidden_layers=layer_count(state, prefix + "text_model.encoder.layers."),
            max_position_embeddings=shape("text_model.embeddings.position_embedding.weight")[0],
            hidden_act="gelu",
            layer_norm_eps=LAYER_NORM_EPS,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
            num_attention_heads=vision_width // VISION_HEAD_WIDTH,
            num_hidden_layers=layer_count(state, prefix + "vision_model.encoder.layers."),
            image_size=grid * patch,
            patch_size=patch,
            hidden_act="gelu",
            layer_norm_eps=LAYER_NORM_EPS,
        ),
        projection_dim=shape("text_projection.weight")[0],
    )
