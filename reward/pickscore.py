"""PickScore v1: a fine-tuned CLIP-H/14 in a Hugging Face folder, scored as `exp(logit_scale) * cosine`."""
from __future__ import annotations

from pathlib import Path

import torch

from .clip_arch import load_tokenizer
from .clip_similarity import ClipSimilarityReward
from .files import ModelFileError
from .hf_load import folder_config, load_strict
from .preprocess import Preprocess


def load_pickscore(folder: Path, tokenizer_folder: Path, dtype: torch.dtype, label: str) -> ClipSimilarityReward:
    from transformers import CLIPModel

    if folder.is_file():
        raise ModelFileError(f"{folder.name} is a file; {label} needs the PickScore_v1 model folder")
    config = folder_config(folder, label)
    if config.get("model_type") != "clip":
        raise ModelFileError(
            f"{folder.name} holds a '{config.get('model_type')}' model; {label} needs the CLIP folder PickScore_v1"
        )
    clip = load_strict(CLIPModel, folder, dtype, label)
    tokenizer = load_tokenizer(tokenizer_folder)
    size = clip.config.vision_config.image_size
    return ClipSimilarityReward(clip, tokenizer, Preprocess("resize_crop", size), label, use_logit_scale=True)
