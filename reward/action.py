"""Action recognition as a clip reward, as VADER's `actpred`: how strongly VideoMAE, fine-tuned on Kinetics-400, sees
the prompt's action in the clip.

Facts relied on, from VADER (github.com/mihirp1998/VADER, `Core/actpred_scorer.py` at a6e42bb and
`VADER-VideoCrafter/scripts/main/train_t2v_lora.py`, `actpred_loss_fn`):
- The model is `VideoMAEForVideoClassification` from `MCG-NJU/videomae-base-finetuned-kinetics`, built with `num_frames`
  set to the number of frames it scores: all the decoded ones (half the clip's in its `alt` decode mode).
- Each frame is squashed to 224x224 by torchvision's `Resize((224, 224), antialias=True)` (bilinear, its default) and
  normalised with the ImageNet mean and std; the frames go in as one clip `[1,T,3,224,224]`.
- The target class is the prompt itself when the prompt is a Kinetics label, else the label of the first of its
  keywords (`VADER_KEYWORDS`, in its order, matched as case-sensitive substrings) the prompt contains; any other prompt
  is an error there (it prints a request to add a mapping and raises NotImplementedError), and a ValueError here.
- The score is the softmax probability of the target class; the loss is the cross-entropy to it, -log p.

Here the reward scores `clip_frames` (the model's `num_frames`, 16) evenly spaced frames of a longer clip, and all the
frames of a shorter one, as VADER does: its model built for T frames differs from the 16-frame one only in the fixed
sinusoid position table, whose rows do not depend on the table's length, so the first rows of this one's are that
model's. The tubelet convolution takes frames in pairs (the official `tubelet_size` is 2), so a clip needs 2 frames and
an odd count leaves its last frame unused, as in VADER's model. The whole clip goes through one forward (`micro_batch`
does not apply).

The reward is the probability p (0..1). Under the pack's `negative` loss form (-p * scale) its gradient is p times
the cross-entropy's, so it fades where the model gives the class little probability; setting `log_probability` makes
the score log p, and the `negative` form with scale 1 then is VADER's cross-entropy exactly. `target_class`, when set
to one of the model's labels, replaces the prompt's mapping (for prompts that name no Kinetics action).
"""
from __future__ import annotations

from collections.abc import Container
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClipReward, set_hf_checkpointing
from .files import ModelFileError
from .hf_load import folder_config, load_strict
from .preprocess import normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VADER's prompt keywords and their Kinetics-400 labels, in the order its mapping tries them.
VADER_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("piano", "playing piano"),
    ("guitar", "playing guitar"),
    ("doughnuts", "eating doughnuts"),
    ("beer", "drinking beer"),
    ("badminton", "playing badminton"),
    ("cello", "playing cello"),
    ("scooter", "riding scooter"),
    ("ballet", "dancing ballet"),
    ("pancake", "flipping pancake"),
    ("violin", "playing violin"),
    ("wood", "chopping wood"),
    ("watermelon", "eating watermelon"),
    ("jogging", "jogging"),
)


def vader_action(prompt: str, labels: Container[str]) -> str | None:
    """The class VADER's mapping gives `prompt`: the prompt when it is one of `labels`, else the label of its first
    keyword found in the prompt; None when neither."""
    if prompt in labels:
        return prompt
    return next((label for keyword, label in VADER_KEYWORDS if keyword in prompt), None)


def videomae_pixels(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames `[T,3,H,W]` in 0..1 squashed to `size`x`size` (bilinear, antialiased) and ImageNet-normalised."""
    frames = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(frames, IMAGENET_MEAN, IMAGENET_STD)


class ActionReward(ClipReward):
    """The probability VideoMAE gives the prompt's Kinetics-400 action (see the module docstring)."""

    min_frames = 2

    def __init__(self, model: nn.Module, label: str) -> None:
        super().__init__(None, model.config.num_frames)
        self.model = model
        self.label = label
        self.target_class: str | None = None
        self.log_probability = False
        self.freeze()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, self.model.videomae, enabled)

    def text_features(self, prompt: str) -> int:
        """The target class index (a lookup: nothing to cache)."""
        labels = self.model.config.label2id
        name = self.target_class if self.target_class is not None else vader_action(prompt, labels)
        if name is None:
            keywords = ", ".join(keyword for keyword, _ in VADER_KEYWORDS)
            raise ValueError(
                f"{self.label}: the prompt {prompt!r} names no Kinetics-400 action. As in VADER, the prompt must be a "
                f"Kinetics-400 label (e.g. 'playing guitar') or contain one of the words {keywords}; reword it, or "
                "set the reward's target_class to the Kinetics-400 label to reward"
            )
        if name not in labels:
            raise ValueError(f"{self.label}: '{name}' is not one of the model's {len(labels)} classes (Kinetics-400 labels)")
        return labels[name]

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Class logits `[1,C]` of the clip `[T,3,H,W]`, with the position table of a model built for its T frames."""
        config = self.model.config
        pixels = videomae_pixels(frames.to(self.weight_device()), config.image_size).to(self.weight_dtype())
        embeddings = self.model.videomae.embeddings
        table = embeddings.position_embeddings
        per_tubelet = table.shape[1] // (config.num_frames // config.tubelet_size)
        embeddings.position_embeddings = table[:, : per_tubelet * (frames.shape[0] // config.tubelet_size)]
        try:
            return self.model(pixel_values=pixels[None]).logits
        finally:
            embeddings.position_embeddings = table

    def score_clip(self, frames: torch.Tensor, target: int) -> torch.Tensor:
        log_probs = self.logits(frames).float().log_softmax(-1)[0]
        probs = log_probs.detach().exp()
        self.last_sub_scores = {"target probability": probs[target].item(), "top-1 probability": probs.max().item()}
        return log_probs[target] if self.log_probability else log_probs[target].exp()


def load_action(folder: Path, encoder: None, dtype: torch.dtype, label: str) -> ActionReward:
    """The reward on a videomae-base-finetuned-kinetics folder, loaded strictly."""
    from transformers import VideoMAEForVideoClassification

    config = folder_config(folder, label)
    if config.get("model_type") != "videomae":
        raise ModelFileError(
            f"{folder.name} holds a '{config.get('model_type')}' model; {label} needs videomae-base-finetuned-kinetics"
        )
    return ActionReward(load_strict(VideoMAEForVideoClassification, folder, dtype, label), label)
