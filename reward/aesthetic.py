"""LAION aesthetic predictors: an MLP head on the L2-normalised image embedding of CLIP ViT-L/14 (v2) or SigLIP (v2.5)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageTower, RewardModel
from .files import ModelFileError, read_weights
from .hf_load import folder_config, load_strict
from .preprocess import SIGLIP_MEAN, SIGLIP_STD, Preprocess

# (hidden widths, dropout after each hidden Linear); the layers are Linear/Dropout pairs ending in Linear(16, 1).
V2_HEAD = ((1024, 128, 64, 16), (0.2, 0.2, 0.1, None))
V25_HEAD = ((1024, 128, 64, 16), (0.5, 0.5, 0.5, 0.2))


def build_head(embed_dim: int, widths: tuple[int, ...], dropouts: tuple[float | None, ...]) -> nn.Sequential:
    """The MLP as the official Sequential, so that its state-dict indices match the published files."""
    layers: list[nn.Module] = []
    width_in = embed_dim
    for width, dropout in zip(widths, dropouts):
        layers.append(nn.Linear(width_in, width))
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, 1))
    return nn.Sequential(*layers)


def head_state(loaded: Mapping[str, torch.Tensor], prefix: str, name: str) -> dict[str, torch.Tensor]:
    """The head's weights (a plain state dict in both published files) keyed by layer index."""
    state = dict(loaded)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        found = ", ".join(sorted(state)[:3])
        raise ModelFileError(f"{name} is not an aesthetic-predictor head: no '{prefix}*' keys (found {found})")
    rest = sorted(k for k in state if not k.startswith(prefix))
    if rest:
        raise ModelFileError(f"{name} has keys an aesthetic head does not have: {rest[:5]}")
    return picked


class AestheticReward(ImageTower, RewardModel):
    """Aesthetic score (about 1..10) of each frame; the prompt is not used."""

    uses_prompt = False

    def __init__(self, backbone: nn.Module, head: nn.Sequential, output_field: str, preprocess: Preprocess, label: str):
        super().__init__(preprocess)
        self.backbone = backbone
        self.head = head
        self.output_field = output_field
        self.label = label
        self.freeze()

    def score_pixels(self, pixels: torch.Tensor, text: None) -> torch.Tensor:
        embedding = F.normalize(self.embed_pixels(pixels).float(), dim=-1)
        return self.head(embedding.to(self.head[0].weight.dtype)).squeeze(-1)


def _load_head(path: Path, embed_dim: int, spec: tuple, prefix: str, dtype: torch.dtype, label: str) -> nn.Sequential:
    if path.is_dir():
        raise ModelFileError(f"{path.name} is a folder; {label} needs the head file (.pth)")
    head = build_head(embed_dim, *spec)
    state = head_state(read_weights(path), prefix, path.name)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{path.name} does not fit the {label} head on a {embed_dim}-wide encoder: {err}") from err
    return head.to(dtype).eval()


def load_aesthetic_v2(head_file: Path, clip_folder: Path, dtype: torch.dtype, label: str) -> AestheticReward:
    """The head on CLIPModel's image features: the vision tower and `visual_projection` sized as the CLIPModel sizes
    it (its top-level `projection_dim`, whatever the vision sub-config says) and loaded strictly from the folder."""
    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    config = folder_config(clip_folder, label)
    if config.get("model_type") != "clip":
        raise ModelFileError(
            f"{clip_folder.name} holds a '{config.get('model_type')}' model; {label} needs clip-vit-large-patch14"
        )
    clip_config = CLIPConfig.from_pretrained(str(clip_folder))
    vision_config = clip_config.vision_config
    vision_config.projection_dim = clip_config.projection_dim
    backbone = load_strict(
        CLIPVisionModelWithProjection, clip_folder, dtype, label, config=vision_config,
        ignore_unexpected=("text_", "logit_scale"),
    )
    head = _load_head(head_file, backbone.config.projection_dim, V2_HEAD, "layers.", dtype, label)
    size = backbone.config.image_size
    return AestheticReward(backbone, head, "image_embeds", Preprocess("resize_crop", size, crop_offset="round"), label)


def load_siglip_tower(folder: Path, dtype: torch.dtype, label: str) -> tuple[nn.Module, Preprocess]:
    """The SigLIP vision tower of a siglip-so400m-patch14-384 folder, loaded strictly, and its image pipeline."""
    from transformers import SiglipVisionModel

    config = folder_config(folder, label)
    if config.get("model_type") not in ("siglip", "siglip_vision_model"):
        raise ModelFileError(
            f"{folder.name} holds a '{config.get('model_type')}' model; {label} needs siglip-so400m-patch14-384"
        )
    backbone = load_strict(SiglipVisionModel, folder, dtype, label, ignore_unexpected=("text_", "logit_"))
    return backbone, Preprocess("squash", backbone.config.image_size, SIGLIP_MEAN, SIGLIP_STD)


def load_aesthetic_v25(head_file: Path, siglip_folder: Path, dtype: torch.dtype, label: str) -> AestheticReward:
    backbone, preprocess = load_siglip_tower(siglip_folder, dtype, label)
    head = _load_head(head_file, backbone.config.hidden_size, V25_HEAD, "scoring_head.", dtype, label)
    return AestheticReward(backbone, head, "pooler_output", preprocess, label)
