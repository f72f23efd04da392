"""Tensor preprocessing against independent PIL-based implementations of the official pipelines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from video_reward_lora.reward.preprocess import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, Preprocess

# PIL works on uint8 images: half a grey level of rounding after the resize, before normalisation (std ~0.27)
UINT8_TOLERANCE = 1.5 / 255 / 0.26


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth test picture (PIL and torch filters agree on smooth content up to uint8 rounding)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(2, 6, 3)
    rgb = np.stack([np.sin(a * x + b * y), np.cos(b * x - c * y), np.sin(c * (x + y))], -1) * 0.45 + 0.5
    return (rgb * 255).round().astype(np.uint8)


def _frames(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)


def _normalise(array: np.ndarray, mean, std) -> torch.Tensor:
    out = (torch.from_numpy(array).float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    return out.permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("height,width", [(480, 832), (512, 512), (720, 1280), (832, 480)])
def test_letterbox_matches_pil_resize_and_centred_zero_pad(height, width):
    array = _image(height, width)
    scale = 224 / max(height, width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.BICUBIC))
    canvas = np.zeros((224, 224, 3), np.uint8)
    top, left = (224 - new_h) // 2, (224 - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    expected = _normalise(canvas, CLIP_MEAN, CLIP_STD)
    ours = Preprocess("letterbox", 224)(_frames(array))
    assert ours.shape == (1, 3, 224, 224)
    assert (ours - expected).abs().max() < UINT8_TOLERANCE
    pad = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    if top:
        assert torch.allclose(ours[0, :, 0, :], pad.view(3, 1).expand(3, 224))


@pytest.mark.parametrize("height,width", [(480, 832), (833, 481), (300, 300)])
def test_resize_crop_matches_clip_image_processor(height, width):
    from transformers import CLIPImageProcessorPil

    array = _image(height, width, seed=1)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    expected = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
    ours = Preprocess("resize_crop", 224)(_frames(array))
    assert ours.shape == expected.shape == (1, 3, 224, 224)
    assert (ours - expected).abs().max() < UINT8_TOLERANCE


def test_squash_matches_siglip_image_processor():
    from transformers import SiglipImageProcessorPil

    array = _image(480, 832, seed=2)
    processor = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    expected = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
    ours = Preprocess("squash", 384, SIGLIP_MEAN, SIGLIP_STD)(_frames(array))
    assert (ours - expected).abs().max() < 1.5 / 255 / 0.5


@pytest.mark.parametrize("mode", ["letterbox", "resize_crop", "squash"])
def test_gradients_reach_every_used_pixel(mode):
    frames = torch.rand(2, 3, 96, 160, requires_grad=True)
    Preprocess(mode, 64)(frames).sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
    if mode != "resize_crop":
        assert (frames.grad.abs().sum(dim=(0, 1)) > 0).float().mean() > 0.99


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        Preprocess("squash", 64)(torch.rand(3, 64, 64))
