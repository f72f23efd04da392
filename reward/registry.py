"""The reward models we support: their official files, where they come from, and how they load."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .base import DEFAULT_MICRO_BATCH
from .files import ModelFileError, resolve_inside

CLIP_H_TOKENIZER = "CLIP-ViT-H-14-laion2B-s32B-b79K"
SIGLIP_SO400M = "siglip-so400m-patch14-384"
SIGLIP_SO400M_SOURCE = "https://huggingface.co/google/siglip-so400m-patch14-384 (config.json, model.safetensors)"
CLIP_H_TOKENIZER_SOURCE = (
    "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the tokenizer files: tokenizer.json, "
    "vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)"
)


@dataclass(frozen=True)
class RewardSpec:
    """One supported reward model.

    `checkpoint` and `encoder` are the official file or folder names under models/reward_models, None for a reward
    that needs no such file (the temporal measures); `encoder` is the tokenizer folder (HPS, PickScore, MPS) or the
    image-encoder folder (aesthetic predictors, subject consistency). `norm` is the (mean, std) used to put scores on
    a common scale when several rewards are mixed (rough estimates). The loader is called as
    `loader(checkpoint path or None, encoder path or None, dtype, label)`."""

    key: str
    label: str
    checkpoint: str | None
    checkpoint_source: str | None
    encoder: str | None
    encoder_source: str | None
    encoder_kind: str | None
    loader: str
    norm: tuple[float, float]
    loss_target: float
    loss_scale: float
    min_frames: int = 1  # a clip reward's: the frames it needs to score a clip


REWARDS: dict[str, RewardSpec] = {
    spec.key: spec
    for spec in (
        RewardSpec(
            "hps_v2.1", "HPS v2.1", "HPS_v2.1_compressed.pt",
            "https://huggingface.co/xswu/HPSv2/blob/main/HPS_v2.1_compressed.pt",
            CLIP_H_TOKENIZER, CLIP_H_TOKENIZER_SOURCE, "tokenizer", "hps:load_hps", (0.27, 0.02), 1.0, 1.0,
        ),
        RewardSpec(
            "hps_v2", "HPS v2", "HPS_v2_compressed.pt",
            "https://huggingface.co/xswu/HPSv2/blob/main/HPS_v2_compressed.pt",
            CLIP_H_TOKENIZER, CLIP_H_TOKENIZER_SOURCE, "tokenizer", "hps:load_hps", (0.26, 0.02), 1.0, 1.0,
        ),
        RewardSpec(
            "pickscore", "PickScore", "PickScore_v1",
            "https://huggingface.co/yuvalkirstain/PickScore_v1 (the whole folder: config.json, model.safetensors)",
            CLIP_H_TOKENIZER, CLIP_H_TOKENIZER_SOURCE, "tokenizer", "pickscore:load_pickscore", (21.0, 1.5), 100.0, 0.01,
        ),
        RewardSpec(
            "mps", "MPS", "MPS_overall_checkpoint.pth",
            "the Google Drive link in https://github.com/Kwai-Kolors/MPS (converted to safetensors on first use)",
            CLIP_H_TOKENIZER, CLIP_H_TOKENIZER_SOURCE, "tokenizer", "mps:load_mps", (10.0, 2.0), 100.0, 0.01,
        ),
        RewardSpec(
            "aesthetic_v2.5", "Aesthetic v2.5", "aesthetic_predictor_v2_5.pth",
            "https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/aesthetic_predictor_v2_5.pth",
            SIGLIP_SO400M, SIGLIP_SO400M_SOURCE, "image encoder", "aesthetic:load_aesthetic_v25", (5.5, 1.0), 10.0, 0.1,
        ),
        RewardSpec(
            "aesthetic_v2", "Aesthetic v2", "sac+logos+ava1-l14-linearMSE.pth",
            "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth",
            "clip-vit-large-patch14",
            "https://huggingface.co/openai/clip-vit-large-patch14 (config.json, model.safetensors)",
            "image encoder", "aesthetic:load_aesthetic_v2", (5.5, 1.0), 10.0, 0.1,
        ),
        # VADER's action reward (reward/action.py), a clip reward: the probability (0..1) of the prompt's Kinetics-400
        # class. Its norm is a rough guess, not a measurement: a classifier gives a clip that clearly shows the action a
        # high probability (est. 0.5-0.9) and one that does not a low one (est. under 0.1), so generated clips spread
        # widely, around 0.3. As for the temporal measures, the loss target is the best value (1) and the scale keeps
        # the loss on 0..1.
        RewardSpec(
            key="action", label="Action (VideoMAE)", checkpoint="videomae-base-finetuned-kinetics",
            checkpoint_source="https://huggingface.co/MCG-NJU/videomae-base-finetuned-kinetics (the whole folder: "
            "config.json, model.safetensors or pytorch_model.bin)",
            encoder=None, encoder_source=None, encoder_kind=None, loader="action:load_action", norm=(0.3, 0.3),
            loss_target=1.0, loss_scale=1.0, min_frames=2,
        ),
        # The temporal measures (reward/temporal.py) are clip rewards. Their norms are rough guesses, not measurements
        # (random or tiny-model frames say nothing about generated video): consecutive frames of a generated clip
        # differ by a few percent of the intensity range per pixel, so flicker's second difference is about 0.01-0.03
        # (flicker about 0.98) and dynamism's mean squared first difference about 0.001-0.01; SigLIP embeddings of
        # consecutive frames of one scene have cosines of about 0.9-1 (VBench's subject consistency, on DINO, is
        # 0.9-0.98). All three lie in 0..1 (the cosine in -1..1) with 1 the best value, so, as for the rewards above,
        # the loss target is the best value and the scale keeps the loss on the 0..1 range of the score.
        RewardSpec(
            key="flicker", label="Flicker", checkpoint=None, checkpoint_source=None, encoder=None, encoder_source=None,
            encoder_kind=None, loader="temporal:load_flicker", norm=(0.98, 0.01), loss_target=1.0, loss_scale=1.0, min_frames=3,
        ),
        RewardSpec(
            key="dynamism", label="Dynamism", checkpoint=None, checkpoint_source=None, encoder=None, encoder_source=None,
            encoder_kind=None, loader="temporal:load_dynamism", norm=(0.004, 0.004), loss_target=1.0, loss_scale=1.0, min_frames=2,
        ),
        RewardSpec(
            key="subject_consistency", label="Subject consistency", checkpoint=None, checkpoint_source=None,
            encoder=SIGLIP_SO400M, encoder_source=SIGLIP_SO400M_SOURCE, encoder_kind="image encoder",
            loader="temporal:load_subject_consistency", norm=(0.95, 0.03), loss_target=1.0, loss_scale=1.0,
            min_frames=2,
        ),
        # VideoReward (reward/video_reward.py), a clip reward: Overall = VQ + MQ + TA, each standardised by the mean
        # and std of its scores on the authors' data (model_config.json's inference_config), so Overall is unbounded
        # with mean about 0 on such data. Its norm is a rough guess, not a measurement: three correlated unit-spread
        # terms give a spread of about 2-3. It has no best value, so the loss target is a clip about two spreads
        # above the mean and the scale puts the distance to it on a 0..1 range. It needs 2 frames (one temporal
        # patch of Qwen2-VL); it samples its own, at 2 per second of the clip (frame rate `source_fps`, 16).
        RewardSpec(
            key="videoreward", label="VideoReward", checkpoint="VideoReward",
            checkpoint_source="https://huggingface.co/KwaiVGI/VideoReward (the whole folder: model_config.json, "
            "checkpoint-11352/model.pth and checkpoint-11352/tokenizer/)",
            encoder=None, encoder_source=None, encoder_kind=None, loader="video_reward:load_video_reward",
            norm=(0.0, 2.5), loss_target=5.0, loss_scale=0.2, min_frames=2,
        ),
    )
}


def spec_for(key: str) -> RewardSpec:
    try:
        return REWARDS[key]
    except KeyError:
        raise ValueError(f"unknown reward model '{key}'; choose one of {', '.join(REWARDS)}") from None


def locate(roots: Iterable[Path], name: str, what: str, official: str, source: str) -> Path:
    """`name` inside one of the reward_models folders, or an error that says what to put where."""
    roots = [Path(r) for r in roots]
    found = resolve_inside(roots, name)
    if found is None:
        where = ", ".join(str(r) for r in roots) or "(no reward_models folder is configured)"
        hint = f" The official one is '{official}', from {source}." if name != official else f" Get it from {source}."
        raise ModelFileError(f"{what}: '{name}' was not found in models/reward_models (looked in: {where}).{hint}")
    return found


def locate_if_used(roots: list[Path], given: str | None, official: str | None, what: str, source: str | None) -> Path | None:
    """`locate` the file a reward uses (`given`, else its `official` name); None for a reward that uses no such file."""
    if official is None:
        if given:
            raise ValueError(f"{what}: this reward uses no such file, got '{given}'; leave it on auto")
        return None
    return locate(roots, given or official, what, official, source)


def load_reward(
    key: str,
    roots: Iterable[Path],
    checkpoint: str | None = None,
    encoder: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    micro_batch: int = DEFAULT_MICRO_BATCH,
) -> torch.nn.Module:
    """Load a reward model from its files in the reward_models folders (official names unless given); it scores
    `micro_batch` frames per forward."""
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch (frames per forward) must be a whole number of at least 1, got {micro_batch!r}")
    spec = spec_for(key)
    roots = list(roots)
    ckpt = locate_if_used(roots, checkpoint, spec.checkpoint, spec.label, spec.checkpoint_source)
    enc = locate_if_used(roots, encoder, spec.encoder, f"{spec.label} {spec.encoder_kind or 'encoder'}", spec.encoder_source)
    module, function = spec.loader.split(":")
    loader = getattr(importlib.import_module(f".{module}", __package__), function)
    model = loader(ckpt, enc, dtype, spec.label)
    model.spec = spec
    model.micro_batch = micro_batch
    return model.to(device)
