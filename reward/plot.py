"""Line charts of scores drawn with Pillow (no plotting library needed), as `[H,W,3]` uint8 arrays."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def line_chart(
    series: Mapping[str, Sequence[float]],
    title: str = "",
    x_label: str = "frame",
    x_values: Sequence[float] | None = None,
    size: tuple[int, int] = (640, 360),
) -> np.ndarray:
    """One line per series over a shared x axis (indices unless `x_values` is given), with axis ticks and a legend."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 64, 16, 28, 40
    values = [float(v) for points in series.values() for v in points if np.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    min_span = 1e-3 * max(abs(lo), abs(hi), 1e-9)
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    longest = max((len(points) for points in series.values()), default=1)
    xs = list(x_values) if x_values is not None else list(range(longest))
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0, 1)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def px(x: float, y: float) -> tuple[float, float]:
        fx = left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)
        fy = top + (hi - y) / (hi - lo) * (height - top - bottom)
        return fx, fy

    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for i in range(5):
        y = lo + (hi - lo) * i / 4
        _, fy = px(x_lo, y)
        draw.line([left - 4, fy, left, fy], fill=(0, 0, 0))
        draw.line([left, fy, width - right, fy], fill=(230, 230, 230))
        draw.text((4, fy - 6), f"{y:.4g}", fill=(0, 0, 0), font=font)
    for i in range(6):
        x = x_lo + (x_hi - x_lo) * i / 5
        fx, _ = px(x, lo)
        draw.line([fx, height - bottom, fx, height - bottom + 4], fill=(0, 0, 0))
        draw.text((fx - 8, height - bottom + 6), f"{x:.4g}", fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 3 * len(x_label), height - 14), x_label, fill=(0, 0, 0), font=font)
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = [px(x, float(y)) for x, y in zip(xs, points) if np.isfinite(y)]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        draw.text((width - right - 160, top + 6 + 14 * n), f"-- {name}", fill=colour, font=font)
    return np.asarray(image)
