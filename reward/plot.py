"""The pictures the pack draws, in one style: charts of scores and training curves (matplotlib's Agg renderer) and
grids of video frames (Pillow), each as an `[H,W,3]` uint8 array.

Charts are built on explicit `Figure` / `FigureCanvasAgg` objects, never pyplot's global state, so drawing is safe
from ComfyUI's worker threads; matplotlib is imported only when something is drawn."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .files import atomic_path

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DPI = 100
# font sizes in points (1 pt = 1.39 px at DPI 100): still about 9 px high when a node shows a 640-px chart at half size
TITLE_SIZE, LABEL_SIZE, TICK_SIZE, LEGEND_SIZE = 16, 15, 14, 13
CHART_SIZE = (640, 400)  # (width, height) in pixels of a one-axis chart
PANEL_HEIGHT = 340  # pixels per axis when several are stacked
SMOOTH_AFTER = 20  # a series longer than this is drawn as an EMA line over its faint raw points
MIN_FRAME_HEIGHT = 256  # frames smaller than this are enlarged (nearest neighbour) in frame grids
CAPTION_SIZE = 18  # pixels


@dataclass(frozen=True)
class Series:
    """One line: `y` over `x` (0, 1, 2, ... when None); `points` marks a sparse series (e.g. held-out rewards);
    `smooth` lets a long series be drawn as an EMA over its faint raw points."""

    label: str
    y: Sequence[float]
    x: Sequence[float] | None = None
    points: bool = False
    smooth: bool = True


@dataclass(frozen=True)
class Panel:
    """One axis; the series on it share its y scale. `lines` are labelled horizontal reference lines."""

    series: Sequence[Series]
    title: str = ""
    x_label: str = "frame"
    y_label: str = "score"
    lines: Mapping[str, float] = field(default_factory=dict)
    y_limits: tuple[float, float] | None = None
    empty_text: str = "no data yet"


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with weight `2/(span+1)` on the newest value, started at the first value."""
    weight = 2.0 / (span + 1)
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else smoothed[-1] + weight * (value - smoothed[-1]))
    return smoothed


def smoothing_span(count: int) -> int | None:
    """The EMA span for a series of `count` points (a 25th of it, at least 5); None when it is short enough."""
    return max(5, round(count / 25)) if count > SMOOTH_AFTER else None


def typical_limits(values: Sequence[float], mean: float, std: float, spread: float = 3.0) -> tuple[float, float]:
    """y limits for scores of a reward whose scores are typically `mean ± std`: the band `mean ± spread·std`, widened
    to the scores where they leave it. Charts of the same reward then share one scale whenever their scores are
    typical, so two videos' charts can be compared side by side."""
    lo, hi = mean - spread * std, mean + spread * std
    finite = [float(v) for v in values if math.isfinite(v)]
    if finite and (min(finite) < lo or max(finite) > hi):
        low, high = min(lo, min(finite)), max(hi, max(finite))
        pad = 0.05 * (high - low)
        lo, hi = (low - pad if low < lo else lo), (high + pad if high > hi else hi)
    return lo, hi


def _draw_series(ax: "Axes", series: Series, colour: str) -> bool:
    """Draw one series; False when it has no finite point."""
    xs = range(len(series.y)) if series.x is None else series.x
    pairs = [(float(x), float(y)) for x, y in zip(xs, series.y) if math.isfinite(y)]
    if not pairs:
        return False
    x, y = zip(*pairs)
    span = smoothing_span(len(y)) if series.smooth and not series.points else None
    if span is not None:
        ax.plot(x, y, color=colour, alpha=0.3, linewidth=1.0)
        ax.plot(x, ema(y, span), color=colour, linewidth=2.5, label=f"{series.label} (EMA over {span})")
    elif series.points:
        ax.plot(x, y, color=colour, linewidth=1.5, marker="o", markersize=8, label=series.label)
    else:
        ax.plot(x, y, color=colour, linewidth=2.5, marker="o" if len(y) <= 60 else None, markersize=5,
                label=series.label)
    return True


def _draw_panel(ax: "Axes", panel: Panel, title_chars: int) -> None:
    """One panel on its own (sub)figure: the title at the left and the legend at the right above the axes, outside the
    data, so neither can cover a line."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    drawn = [_draw_series(ax, s, COLOURS[i % len(COLOURS)]) for i, s in enumerate(panel.series)]
    for name, value in panel.lines.items():
        ax.axhline(value, color="0.35", linestyle="--", linewidth=1.5, label=name)
    if panel.title:  # long labels (a mix of rewards) wrap instead of running off the image
        ax.set_title(textwrap.fill(panel.title, title_chars), fontsize=TITLE_SIZE, loc="left")
    ax.set_xlabel(panel.x_label, fontsize=LABEL_SIZE)
    ax.set_ylabel(textwrap.fill(panel.y_label, 36), fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # steps and frame numbers are whole numbers
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_powerlimits((-3, 4))
    ax.yaxis.set_major_formatter(formatter)
    ax.grid(True, color="0.9", linewidth=1.0)
    ax.set_axisbelow(True)
    if panel.y_limits is not None:
        ax.set_ylim(*panel.y_limits)
    handles, labels = ax.get_legend_handles_labels()
    if not any(drawn):
        ax.text(0.5, 0.5, panel.empty_text, transform=ax.transAxes, ha="center", va="center",
                fontsize=LABEL_SIZE, color="0.4")
    elif handles:
        ax.figure.legend(handles, labels, loc="outside upper right", ncols=min(len(handles), 3), fontsize=LEGEND_SIZE,
                         frameon=False, handlelength=1.5, columnspacing=1.0)


def panels_figure(panels: Sequence[Panel], size: tuple[int, int]) -> "Figure":
    """The panels stacked top to bottom on one `Figure` of `size` (width, height) pixels, not yet rendered; each
    panel is a subfigure holding one axis."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained", facecolor="white")
    title_chars = int(size[0] / (TITLE_SIZE * 0.8))  # characters of a title that fit the width
    for subfigure, panel in zip(np.atleast_1d(figure.subfigures(len(panels), 1)), panels):
        _draw_panel(subfigure.subplots(), panel, title_chars)
    return figure


def render(figure: "Figure") -> np.ndarray:
    """A figure as an `[H,W,3]` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_panels(panels: Sequence[Panel], width: int = CHART_SIZE[0]) -> np.ndarray:
    """Stacked panels, `PANEL_HEIGHT` pixels each (one panel gets the chart height)."""
    height = CHART_SIZE[1] if len(panels) == 1 else PANEL_HEIGHT * len(panels)
    return render(panels_figure(panels, (width, height)))


def line_chart(
    series: Mapping[str, Sequence[float]],
    title: str = "",
    x_label: str = "frame",
    y_label: str = "score",
    x_values: Sequence[float] | None = None,
    y_limits: tuple[float, float] | None = None,
    size: tuple[int, int] = CHART_SIZE,
) -> np.ndarray:
    """Several series on one axis (one shared y scale) over the same x values (0, 1, 2, ... unless given)."""
    panel = Panel([Series(name, values, x_values) for name, values in series.items()], title, x_label, y_label,
                  y_limits=y_limits)
    return render(panels_figure([panel], size))


def score_panel(label: str, frames: Sequence[int], scores: Sequence[float],
                typical: tuple[float, float] | None = None) -> Panel:
    """Per-frame scores of one video with their mean; `typical` (the reward's usual mean and std) fixes the y scale
    so that charts of two videos scored by the same reward share it."""
    finite = [s for s in scores if math.isfinite(s)]
    mean = sum(finite) / len(finite) if finite else float("nan")
    limits = typical_limits(scores, *typical) if typical is not None else None
    lines = {"mean": mean} if finite else {}
    return Panel([Series("per frame", scores, frames, smooth=False)], f"{label}: {mean:.4g} (mean of {len(finite)} frames)",
                 "frame", "score", lines, limits)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """An `[H,W,3]` uint8 picture as a PNG file, written atomically."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as temporary:
        Image.fromarray(pixels).save(temporary)


def frame_grid(frames: np.ndarray, captions: Sequence[str] | None = None, columns: int | None = None,
               min_height: int = MIN_FRAME_HEIGHT) -> np.ndarray:
    """Frames `[N,H,W,3]` uint8 laid out in a grid (`columns`, or about square), each enlarged by a whole factor
    (nearest neighbour) to at least `min_height` pixels high, with an optional caption above each."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    count, height, width = frames.shape[:3]
    columns = max(1, min(count, columns or math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    factor = max(1, math.ceil(min_height / height))
    tile_w, tile_h = width * factor, height * factor
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), CAPTION_SIZE)
    gap = 8
    lines = [_wrap(text, font, tile_w) for text in captions] if captions else [[] for _ in range(count)]
    caption_h = max((len(block) for block in lines), default=0) * (CAPTION_SIZE + 4)
    cell_h = caption_h + tile_h + gap
    sheet = Image.new("RGB", (columns * (tile_w + gap) + gap, rows * cell_h + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for index in range(count):
        row, column = divmod(index, columns)
        left, top = gap + column * (tile_w + gap), gap + row * cell_h
        for number, text in enumerate(lines[index]):
            draw.text((left, top + number * (CAPTION_SIZE + 4)), text, fill="black", font=font)
        tile = Image.fromarray(frames[index]).resize((tile_w, tile_h), Image.Resampling.NEAREST)
        sheet.paste(tile, (left, top + caption_h))
    return np.asarray(sheet)


def _wrap(text: str, font, width: int, max_lines: int = 2) -> list[str]:
    """`text` broken into at most `max_lines` lines that fit `width` pixels (the last one shortened with '…')."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += "…"
    fitted = []
    for line in lines:
        while len(line) > 1 and font.getlength(line) > width:
            line = line.rstrip("…")[:-1] + "…"
        fitted.append(line)
    return fitted


def save_frames(frames: "torch.Tensor", path: Path, captions: Sequence[str] | None = None, columns: int | None = None) -> None:
    """Frames `[N,3,H,W]` in 0..1 as one PNG grid (`frame_grid`: small frames enlarged, optional captions), written
    atomically."""
    pixels = (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    save_png(frame_grid(pixels, captions, columns), path)
