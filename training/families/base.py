"""The interface every video model family offers to the sampler, the trainer and the nodes."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class TextEmbeddings:
    """Encoded prompts: named tensors with the batch first (embeddings, and masks where a family uses them)."""

    tensors: dict[str, torch.Tensor]

    def cat(self, other: "TextEmbeddings") -> "TextEmbeddings":
        return TextEmbeddings({k: torch.cat([v, other.tensors[k]]) for k, v in self.tensors.items()})

    def to(self, device: torch.device, dtype: torch.dtype) -> "TextEmbeddings":
        return TextEmbeddings({k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in self.tensors.items()})


class VideoFamily(ABC):
    """A loaded model of one family: transformer(s), VAE, text encoder(s), scheduler configuration."""

    name: str
    lora_family: str  # the key-map family of its LoRAs (training.lora.keymap)
    fps: float
    spatial_scale: int = 8
    temporal_scale: int = 4
    offload_idle: bool = False  # moves a transformer onto the device when it runs, and an idle one to the CPU (Wan2.2)

    text_encoders: dict[str, nn.Module]

    def __init__(self, transformer: nn.Module, vae: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        self.transformer = transformer
        self.vae = vae
        self.dtype = dtype
        self.device = device
        self._text_cache: dict[str, TextEmbeddings] = {}
        self._callers: dict[str, Callable[..., Any]] = {}

    @property
    def transformers(self) -> dict[str, nn.Module]:
        """The trainable transformer(s) by name (Wan2.2: the "high" and "low" noise experts)."""
        return {"transformer": self.transformer}

    def expert(self, t: torch.Tensor | float) -> str:
        """The name (in `transformers`) of the transformer that denoises at timestep `t`."""
        return "transformer"

    def sampling_settings(self) -> dict[str, float]:
        """The sampling schedule's settings that depend on the model loaded, for the job's log and status (none here)."""
        return {}

    def route(self, name: str, caller: Callable[..., Any]) -> None:
        """Call the transformer `name` through `caller` (a wrapper of it, such as a DeepSpeed engine) to denoise."""
        self._callers[name] = caller

    def _caller(self, name: str) -> Callable[..., Any]:
        return self._callers.get(name) or self.transformers[name]

    @abstractmethod
    def new_scheduler(self) -> Any:
        """A fresh scheduler (they keep per-run state)."""

    def schedule(self, steps: int, device: torch.device | None = None) -> Any:
        """A fresh scheduler with its timesteps set for `steps` denoising steps."""
        scheduler = self.new_scheduler()
        scheduler.set_timesteps(steps, device=device)
        return scheduler

    @abstractmethod
    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        """Embeddings of `prompts`, computed by the text encoder(s)."""

    @abstractmethod
    def conditioning(self, latents: torch.Tensor, start_image: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The inpaint channels: everything generated for text-to-video, the start image `[B,3,H,W]` in 0..1 kept
        for image-to-video."""

    @abstractmethod
    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings, condition: torch.Tensor) -> torch.Tensor:
        """The transformer's output at timestep `t`."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, first_n: int | None = None) -> torch.Tensor:
        """Frames `[B,F,3,H,W]` in 0..1 from the first `first_n` latent frames (all when None)."""

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Latents (the VAE posterior's mode) of frames `[B,F,3,H,W]` in 0..1, in the layout and scaling `decode` takes."""
        device = next(self.vae.parameters()).device
        pixels = (frames.to(device, torch.float32) * 2 - 1).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.dtype)).latent_dist.mode().float()
        return self._from_vae(latents).to(self.device)

    def _from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latents `[B,C,T,h,w]` in the family's layout and scaling (here: times the VAE's scaling factor)."""
        return latents * self.vae.config.scaling_factor

    @abstractmethod
    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        """The shape of the initial noise."""

    def release_text_encoders(self) -> None:
        """Free the text encoder(s); cached prompts stay encodable."""
        self.text_encoders = {}

    def encode(self, prompts: list[str]) -> TextEmbeddings:
        """Embeddings of `prompts`, each computed once and cached (so the text encoder can be released)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            if not self.text_encoders:
                raise RuntimeError(f"the text encoder was released and {len(missing)} prompts are not cached")
            with torch.no_grad():
                encoded = self._encode(missing)
            for i, prompt in enumerate(missing):
                self._text_cache[prompt] = TextEmbeddings({k: v[i : i + 1].cpu() for k, v in encoded.tensors.items()})
        rows = [self._text_cache[p] for p in prompts]
        joined = rows[0]
        for row in rows[1:]:
            joined = joined.cat(row)
        return joined.to(self.device, self.dtype)

    @classmethod
    def check_size(cls, frames: int, height: int, width: int) -> None:
        """Refuse a video size the family cannot generate (callable on the class: no model needs loading)."""
        multiple = cls.spatial_scale * 2
        if width < multiple or height < multiple or height % multiple or width % multiple:
            raise ValueError(f"{cls.name}: width and height must be positive multiples of {multiple}, got {width}x{height}")
        if frames < 1 or (frames - 1) % cls.temporal_scale:
            raise ValueError(f"{cls.name}: frames must be {cls.temporal_scale}k+1 (e.g. 49), got {frames}")

    def init_latents(self, batch: int, frames: int, height: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
        shape = self.latent_shape(batch, frames, height, width)
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu", dtype=torch.float32)
        return noise.to(self.device, self.dtype)


def check_start_image(image: torch.Tensor, height: int, width: int) -> None:
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"the start image must be [B,3,H,W], got {tuple(image.shape)}")
    if image.shape[-2:] != (height, width):
        raise ValueError(f"the start image is {image.shape[-1]}x{image.shape[-2]}; the video is {width}x{height}")
