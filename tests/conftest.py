"""Shared fixtures: a models/reward_models tree of tiny models in the official formats."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from video_reward_lora.reward import mps
from video_reward_lora.reward.tiny import write_reward_models

ALL_TINY = ("hps_v2.1", "pickscore", "aesthetic_v2", "aesthetic_v2.5")


def write_mps_pickle(path: Path, vocab_size: int, seed: int = 0) -> None:
    """A whole-module pickle shaped like MPS_overall_checkpoint.pth: the classes are registered under the MPS
    repository's module names (trainer.models.*) while saving, and are gone again before anything reads it."""
    from transformers import CLIPModel

    from video_reward_lora.reward.tiny import tiny_clip_config

    clip_mod = types.ModuleType("trainer.models.clip_model")
    cross_mod = types.ModuleType("trainer.models.cross_modeling")
    renames = {
        mps.CrossModel: "Cross_model", mps.CrossAttention: "CrossAttention",
        mps.ParallelTransformerBlock: "ParallelTransformerBlock", mps.Residual: "Residual",
        mps.RotaryEmbedding: "RotaryEmbedding", mps.SwiGLU: "SwiGLU", mps.FixedBiasLayerNorm: "LayerNorm",
    }
    upstream = {}
    for cls, name in renames.items():
        upstream[cls] = type(name, (cls,), {"__module__": cross_mod.__name__})
        setattr(cross_mod, name, upstream[cls])
    xclip = type("XCLIPModel", (CLIPModel,), {"__module__": clip_mod.__name__})
    wrapper_cls = type("CLIPModel", (nn.Module,), {"__module__": clip_mod.__name__})
    clip_mod.XCLIPModel, clip_mod.CLIPModel = xclip, wrapper_cls

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip = CLIPModel(tiny_clip_config(vocab_size, projection_dim=64))
        cross = mps.CrossModel(dim=64, layers=2, heads=4, dim_head=16, ff_inner=128)
        for p in cross.parameters():
            p.data.normal_(0, 0.1)
    clip.__class__ = xclip
    for module in cross.modules():
        if type(module) in upstream:
            module.__class__ = upstream[type(module)]
    wrapper = wrapper_cls()
    wrapper.model, wrapper.cross_model = clip, cross
    names = ("trainer", "trainer.models", clip_mod.__name__, cross_mod.__name__)
    sys.modules.update({n: types.ModuleType(n) for n in names[:2]})
    sys.modules[clip_mod.__name__], sys.modules[cross_mod.__name__] = clip_mod, cross_mod
    try:
        torch.save(wrapper.half(), path)
    finally:
        for n in names:
            sys.modules.pop(n, None)


@pytest.fixture(scope="session", autouse=True)
def gpu_lock_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' training jobs queue on a lock folder of their own, not behind real jobs on the machine."""
    from video_reward_lora.training.jobs.gpu_lock import LOCK_DIR_ENV

    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("gpu_lock")
        patch.setenv(LOCK_DIR_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def reward_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/reward_models with tiny HPS v2.1, PickScore, aesthetic v2/v2.5, MPS and the CLIP tokenizer."""
    root = tmp_path_factory.mktemp("models") / "reward_models"
    write_reward_models(root, ALL_TINY)
    vocab = len(__import__("json").loads((root / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "vocab.json").read_text()))
    write_mps_pickle(root / "MPS_overall_checkpoint.pth", vocab)
    return root


@pytest.fixture
def video() -> torch.Tensor:
    """A 6-frame 96x160 clip in 0..1 (a bright square moving over a gradient)."""
    frames = torch.linspace(0, 1, 160).expand(6, 3, 96, 160).clone()
    for i in range(6):
        frames[i, :, 30:60, 10 + 20 * i : 40 + 20 * i] = torch.tensor([1.0, 0.2, 0.1]).view(3, 1, 1)
    return frames
