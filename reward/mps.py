"""MPS (Multi-dimensional Preference Score): CLIP-H features refined by a condition-masked cross model.

Module and attribute names follow the published checkpoint, so its state dict loads key for key:
`model.*` is a transformers CLIPModel, `cross_model.layers.{i}.{0,1}.fn.*` the cross model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardModel, model_output, set_hf_checkpointing
from .clip_arch import layer_count, load_tokenizer, tokenize, vit_h_config
from .files import ModelFileError, read_weights
from .hf_load import load_strict
from .preprocess import Preprocess

CONDITION = (
    "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure, "
    "instance, texture, quantity, attributes, position, number, location, word, things."
)
ROTARY_BASE = 10000.0


class FixedBiasLayerNorm(nn.Module):
    """LayerNorm with a learned scale and a zero bias kept as a (saved) buffer, as in the MPS cross model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return x + self.fn(x, *args)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * value`, with the value in the first half of the features and the gate in the second."""
    value, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * value


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x)


def multi_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Heads `q [B,H,N,d]` attend over one shared key/value head `k, v [B,M,d]`; `mask [B,N,M]` is additive."""
    sim = torch.einsum("bhid,bjd->bhij", q * q.shape[-1] ** -0.5, k)
    if mask is not None:
        sim = sim + mask.unsqueeze(1).to(sim.dtype)
    out = torch.einsum("bhij,bjd->bhid", sim.softmax(dim=-1), v)
    return out.transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Image tokens attend to text tokens (multi-query), plus a parallel SwiGLU feed-forward on the same input."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_inner: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = FixedBiasLayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * ff_inner, bias=False), SwiGLU(), nn.Linear(ff_inner, dim, bias=False))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.to_out(multi_query_attention(q, k, v, mask)) + self.ff(x)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim_head: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", ROTARY_BASE ** -(torch.arange(0, dim_head, 2).float() / dim_head))

    def forward(self, n: int) -> torch.Tensor:
        t = torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.float())
        return torch.cat((freqs, freqs), dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


class ParallelTransformerBlock(nn.Module):
    """Self-attention over the image tokens (multi-query, rotary on q and k) in parallel with a SwiGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_inner: int) -> None:
        super().__init__()
        self.heads = heads
        self.splits = (heads * dim_head, dim_head, dim_head, 2 * ff_inner)
        self.norm = FixedBiasLayerNorm(dim)
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.splits), bias=False)
        self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff_inner, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, ff = self.fused_attn_ff_proj(self.norm(x)).split(self.splits, dim=-1)
        angles = self.rotary_emb(x.shape[1])
        q = apply_rotary(q.unflatten(-1, (self.heads, -1)).transpose(1, 2), angles)
        k = apply_rotary(k, angles)
        return self.attn_out(multi_query_attention(q, k, v, None)) + self.ff_out(ff)


class CrossModel(nn.Module):
    """Layers of [cross-attention to the text, parallel self-attention block], each residual."""

    def __init__(self, dim: int, layers: int, heads: int, dim_head: int, ff_inner: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Residual(CrossAttention(dim, heads, dim_head, ff_inner)),
                    Residual(ParallelTransformerBlock(dim, heads, dim_head, ff_inner)),
                ]
            )
            for _ in range(layers)
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = image
        for cross, block in self.layers:
            x = block(cross(x, text, mask))
        return x

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "CrossModel":
        """Sizes read off the weights: width, depth, key/value head width, heads and feed-forward width."""
        dim = state["layers.0.0.fn.to_q.weight"].shape[1]
        dim_head = state["layers.0.0.fn.to_kv.weight"].shape[0] // 2
        heads = state["layers.0.0.fn.to_q.weight"].shape[0] // dim_head
        ff_inner = state["layers.0.0.fn.ff.2.weight"].shape[1]
        return cls(dim, layer_count(state, "layers."), heads, dim_head, ff_inner)


class MPSReward(RewardModel):
    """`exp(logit_scale) * cos(text end-token embedding, cross model output at the image class token)`.

    Text tokens whose best similarity to the condition words, relative to the best overall, is at or below
    `threshold` are masked out of the cross attention (0.01 in MPS's training forward and README example,
    0.3 in its benchmark scripts)."""

    def __init__(self, clip: nn.Module, cross_model: CrossModel, tokenizer: Any, label: str, threshold: float = 0.01):
        super().__init__(Preprocess("resize_crop", clip.config.vision_config.image_size))
        self.clip = clip
        self.cross_model = cross_model
        self.tokenizer = tokenizer
        self.label = label
        self.threshold = threshold
        self.freeze()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.clip, self.clip.vision_model, enabled)

    def _token_features(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.clip.text_model(input_ids=tokenize(self.tokenizer, prompt, self.weight_device()))
        return self.clip.text_projection(out.last_hidden_state), self.clip.text_projection(out.pooler_output)

    def encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, end = self._token_features(prompt)
        condition, _ = self._token_features(CONDITION)
        relevance = torch.einsum("bid,bjd->bji", tokens.float(), condition.float()).amax(dim=1, keepdim=True)
        relevance = relevance / relevance.max()
        mask = torch.where(relevance > self.threshold, 0.0, float("-inf"))
        return tokens, F.normalize(end.float(), dim=-1), mask

    def score_pixels(self, pixels: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, end, mask = text
        hidden = model_output(self.clip.vision_model(pixel_values=pixels), "last_hidden_state")
        image = self.clip.visual_projection(hidden)
        n = pixels.shape[0]
        mask = mask.expand(n, image.shape[1], -1)
        refined = self.cross_model(image, tokens.expand(n, -1, -1).to(image.dtype), mask)[:, 0]
        return self.clip.logit_scale.float().exp() * (F.normalize(refined.float(), dim=-1) @ end[0])


def split_state(state: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(CLIP weights, cross-model weights) from a flat MPS state dict; `position_ids` buffers are dropped."""
    clip = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.") and not k.endswith("position_ids")}
    cross = {k[len("cross_model.") :]: v for k, v in state.items() if k.startswith("cross_model.")}
    if not clip or not cross:
        raise ModelFileError(f"{name} is not an MPS checkpoint: it needs 'model.*' (CLIP) and 'cross_model.*' weights")
    rest = sorted(k for k in state if not k.startswith(("model.", "cross_model.")))
    if rest:
        raise ModelFileError(f"{name} has keys an MPS model does not have: {rest[:5]}")
    return clip, cross


def converted_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".safetensors")


_converted_in_memory: set[Path] = set()


def converted_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(weights, name of the file they come from) of the official pickle: from the safetensors beside it, converting
    it on first use; converted in memory when that folder cannot be written (noted once, with how to convert by hand)."""
    from .mps_convert import mps_weights, save_converted

    target = converted_path(checkpoint)
    if target.exists():
        return read_weights(target), target.name
    weights = mps_weights(checkpoint)
    try:
        save_converted(weights, checkpoint, target)
    except OSError as err:
        if checkpoint not in _converted_in_memory:
            _converted_in_memory.add(checkpoint)
            logging.getLogger(__name__).warning(
                "MPS: could not write %s (%s), so %s was converted in memory and will be again on every load. To convert "
                "it once: python -m video_reward_lora.reward.mps_convert %s <a writable folder>/%s, then move that file "
                "next to the checkpoint or choose it as the MPS checkpoint.",
                target, err.strerror or err, checkpoint.name, checkpoint, target.name,
            )
        return weights, checkpoint.name
    return weights, target.name


def load_mps(checkpoint: Path, tokenizer_folder: Path, dtype: torch.dtype, label: str) -> MPSReward:
    """Load MPS from the safetensors written by the converter (the official pickle is converted on first use)."""
    from transformers import CLIPModel

    from .mps_convert import is_pickled_module

    if checkpoint.is_dir():
        raise ModelFileError(f"{checkpoint.name} is a folder; {label} needs MPS_overall_checkpoint.pth")
    if checkpoint.suffix.lower() != ".safetensors" and is_pickled_module(checkpoint):
        state, name = converted_state(checkpoint)
    else:
        state, name = read_weights(checkpoint), checkpoint.name
    clip_state, cross_state = split_state(state, name)
    tokenizer = load_tokenizer(tokenizer_folder)
    clip = load_strict(CLIPModel, None, dtype, label, config=vit_h_config(clip_state, tokenizer), state_dict=clip_state)
    cross_model = CrossModel.from_state(cross_state)
    try:
        cross_model.load_state_dict(cross_state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{name}: the cross-model weights do not fit: {err}") from err
    return MPSReward(clip, cross_model.to(dtype), tokenizer, label)
