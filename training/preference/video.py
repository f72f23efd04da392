"""Video clips of a preference dataset as mp4 files, written and read with PyAV (which ComfyUI ships)."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ...reward.files import atomic_path


class ClipError(ValueError):
    """A clip could not be written or read."""


@dataclass(frozen=True)
class ClipFormat:
    """What a clip holds: its frame count and frame size."""

    frames: int
    height: int
    width: int


def write_mp4(path: Path, frames: torch.Tensor, fps: float) -> None:
    """Write `frames` [F,3,H,W] in 0..1 (H and W even) as an H.264 mp4 at `fps`, atomically."""
    import av

    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ClipError(f"{path.name}: frames must be [F,3,H,W], got {tuple(frames.shape)}")
    count, _, height, width = frames.shape
    if count < 1 or height % 2 or width % 2:
        raise ClipError(f"{path.name}: an mp4 clip needs at least one frame and an even size, "
                        f"got {count} frames of {width}x{height}")
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with atomic_path(path, suffix=".mp4") as temporary:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": "12"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for image in pixels:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())


def _opened(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise ClipError(f"{path} could not be opened as a video: {err}") from err
    if not container.streams.video:
        container.close()
        raise ClipError(f"{path} holds no video stream")
    return container


def probe_mp4(path: Path) -> ClipFormat:
    """The frame count and size of a video file, from its header (its frames are counted when the header omits them)."""
    import av

    with _opened(path) as container:
        stream = container.streams.video[0]
        frames = stream.frames
        try:
            if not frames:
                frames = sum(1 for _ in container.decode(stream))
        except av.FFmpegError as err:
            raise ClipError(f"{path} could not be decoded: {err}") from err
        return ClipFormat(frames, stream.codec_context.height, stream.codec_context.width)


def read_mp4(path: Path) -> torch.Tensor:
    """The frames of a video file as [F,3,H,W] float32 in 0..1."""
    import av
    import numpy as np

    with _opened(path) as container:
        try:
            images = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
        except av.FFmpegError as err:
            raise ClipError(f"{path} could not be decoded: {err}") from err
    if not images:
        raise ClipError(f"{path} holds no frames")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
