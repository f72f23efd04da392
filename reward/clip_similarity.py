"""CLIP image-text similarity rewards (HPS v2/v2.1 and PickScore share this model, with different weights)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import RewardModel, model_output, set_hf_checkpointing
from .clip_arch import tokenize
from .preprocess import Preprocess


class ClipSimilarityReward(RewardModel):
    """Cosine similarity of normalised CLIP image and text embeddings, optionally times `exp(logit_scale)`."""

    def __init__(
        self,
        clip: torch.nn.Module,
        tokenizer: Any,
        preprocess: Preprocess,
        label: str,
        use_logit_scale: bool,
        micro_batch: int = 8,
    ) -> None:
        super().__init__(preprocess, micro_batch)
        self.clip = clip
        self.tokenizer = tokenizer
        self.label = label
        self.use_logit_scale = use_logit_scale
        self.freeze()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.clip, self.clip.vision_model, enabled)

    def encode_text(self, prompt: str) -> torch.Tensor:
        ids = tokenize(self.tokenizer, prompt, self.weight_device())
        features = model_output(self.clip.get_text_features(input_ids=ids), "pooler_output")
        return F.normalize(features.float(), dim=-1)

    embeds = True

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return model_output(self.clip.get_image_features(pixel_values=pixels), "pooler_output")

    def score_pixels(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(self.embed_pixels(pixels).float(), dim=-1) @ text[0]
        if self.use_logit_scale:
            return self.clip.logit_scale.float().exp() * cosine
        return cosine
