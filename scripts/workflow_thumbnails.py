"""Draw the template browser's thumbnails for the shipped workflows: workflows/<name>.jpg beside each <name>.json.

ComfyUI's frontend (1.35.9) shows a custom node pack's workflow as a card titled with its file name, with the
picture `<name>.jpg` from the same folder. Each picture here shows what the workflow does: its steps as a strip of
boxes over synthetic video frames, and what it produces (per-frame scores, a ranking, two videos compared, training
curves). Re-run after adding or renaming a workflow: `.venv/bin/python scripts/workflow_thumbnails.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SIZE_PX, DPI = 512, 128
COLORS = {"wan": "#2f6db5", "cog": "#7a3fb0", "easy": "#c0621c", "train": "#1f8a5b"}


@dataclass(frozen=True)
class Card:
    headline: str
    subline: str
    steps: tuple[str, ...]
    result: str  # "scores", "compare", "rank" or "training"
    color: str
    start_image: bool = False


CARDS = {
    "Wan2.2 T2V, reward LoRAs": Card(
        "Wan2.2 A14B", "text to video, HPS2.1 reward LoRAs", ("prompt", "2 experts\n+ LoRAs", "scored"), "scores", COLORS["wan"]),
    "Wan2.2-Fun I2V, reward LoRAs": Card(
        "Wan2.2-Fun A14B", "image to video, HPS2.1 reward LoRAs", ("image", "2 experts\n+ LoRAs", "scored"), "scores", COLORS["wan"],
        start_image=True),
    "Best of N videos by reward": Card(
        "Best of N", "Wan2.2 videos ranked by HPS v2.1", ("prompt", "N videos", "best"), "rank", COLORS["wan"]),
    "CogVideoX-Fun T2V, reward LoRA": Card(
        "CogVideoX-Fun 5B", "text to video, HPS2.1 reward LoRA", ("prompt", "5B InP\n+ LoRA", "scored"), "scores", COLORS["cog"]),
    "CogVideoX-Fun I2V, reward LoRA": Card(
        "CogVideoX-Fun 5B", "image to video, HPS2.1 reward LoRA", ("image", "5B InP\n+ LoRA", "scored"), "scores", COLORS["cog"],
        start_image=True),
    "Base vs reward LoRA, scored": Card(
        "Base vs LoRA", "same prompt and seed, both scored", ("prompt\n+ seed", "2 videos", "scores"), "compare", COLORS["cog"]),
    "EasyAnimate T2V, reward LoRA": Card(
        "EasyAnimate V5 12B", "text to video, HPS2.1 reward LoRA", ("prompt", "12B InP\n+ LoRA", "scored"), "scores", COLORS["easy"]),
    "Train a reward LoRA": Card(
        "Train a LoRA", "CogVideoX-Fun 2B for HPS v2.1", ("prompts", "backprop\nreward", "status"), "training", COLORS["train"]),
    "VideoDPO, pairs to a DPO LoRA": Card(
        "VideoDPO", "CogVideoX-Fun 2B, HPS v2.1 pairs", ("N videos\nscored", "DPO\nLoRA", "base vs\nLoRA"), "compare", COLORS["train"]),
}


def frame(t: float, vivid: float = 1.0) -> np.ndarray:
    """A small synthetic video frame (sky, setting sun, hills) at time t in [0, 1]; `vivid` scales the saturation."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    sky = np.stack([0.35 + 0.5 * y, 0.5 + 0.25 * y, 0.85 - 0.3 * y], axis=-1)
    sun = np.exp(-(((x - 0.25 - 0.5 * t) * 1.3) ** 2 + (y - 0.25 - 0.25 * t) ** 2) * 60)[..., None] * np.array([1.0, 0.75, 0.3])
    hills = (y > 0.68 + 0.08 * np.sin(6 * x + 2 * t))[..., None] * np.array([-0.25, 0.05, -0.45])
    image = np.clip(sky + sun + hills, 0, 1)
    grey = image.mean(axis=-1, keepdims=True)
    return np.clip(grey + vivid * (image - grey), 0, 1)


def _strip(ax, vivid: float, count: int = 4, marked: bool = False) -> None:
    """`count` frames side by side; `marked` outlines the first (the start image)."""
    ax.imshow(np.concatenate([np.pad(frame(i / (count - 1), vivid), ((0, 0), (2, 2), (0, 0)), constant_values=1.0)
                              for i in range(count)], axis=1))
    if marked:
        ax.add_patch(Rectangle((1.5, -0.5), 64, 48, fill=False, ec="#d33", lw=2.5))
    ax.set_axis_off()


def _steps(ax, card: Card) -> None:
    ax.set_xlim(0, len(card.steps))
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    for i, step in enumerate(card.steps):
        ax.text(i + 0.5, 0.5, step, ha="center", va="center", fontsize=12, color="white", fontweight="bold",
                bbox={"boxstyle": "round,pad=0.4", "fc": card.color, "ec": "none"})
        if i:
            ax.annotate("", xy=(i + 0.14, 0.5), xytext=(i - 0.14, 0.5), arrowprops={"arrowstyle": "-|>", "color": "#555", "lw": 2})


def _chart(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.tick_params(labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)


def _result(fig, card: Card) -> None:
    frames = range(1, 9)
    if card.result == "scores":
        _strip(fig.add_axes((0.04, 0.4, 0.92, 0.24)), 1.2, marked=card.start_image)
        ax = fig.add_axes((0.17, 0.12, 0.78, 0.24))
        ax.plot(frames, [0.270, 0.280, 0.285, 0.290, 0.288, 0.292, 0.295, 0.293], "-o", color=card.color, ms=4)
        _chart(ax, "frame", "score")
    elif card.result == "compare":
        _strip(fig.add_axes((0.03, 0.4, 0.46, 0.24)), 0.55, 2)
        _strip(fig.add_axes((0.51, 0.4, 0.46, 0.24)), 1.3, 2)
        ax = fig.add_axes((0.17, 0.12, 0.78, 0.24))
        ax.plot(frames, np.linspace(0.262, 0.268, 8), "-o", color="#888", ms=4, label="base")
        ax.plot(frames, np.linspace(0.281, 0.292, 8), "-o", color=card.color, ms=4, label="LoRA")
        ax.legend(fontsize=9, loc="center right", frameon=False)
        _chart(ax, "frame", "score")
    elif card.result == "rank":
        ax = fig.add_axes((0.14, 0.12, 0.8, 0.5))
        ax.barh(range(4)[::-1], [0.291, 0.284, 0.276, 0.268], color=[card.color] + ["#9aa"] * 3)
        ax.set_yticks(range(4)[::-1], [f"#{i + 1}" for i in range(4)])
        ax.set_xlim(0.25, 0.295)
        ax.set_xticks([0.25, 0.27, 0.29])
        _chart(ax, "HPS v2.1", "")
    else:
        ax = fig.add_axes((0.17, 0.12, 0.78, 0.5))
        steps = np.arange(0, 1001, 50)
        ax.plot(steps, 0.24 + 0.05 * (1 - np.exp(-steps / 300)), color=card.color, lw=3)
        ax.set_yticks([0.24, 0.26, 0.28])
        _chart(ax, "step", "reward")


def render(card: Card) -> Figure:
    fig = Figure(figsize=(SIZE_PX / DPI, SIZE_PX / DPI), dpi=DPI, facecolor="white")
    fig.text(0.5, 0.93, card.headline, ha="center", va="center", fontsize=20, fontweight="bold", color=card.color)
    fig.text(0.5, 0.85, card.subline, ha="center", va="center", fontsize=11, color="#333")
    _steps(fig.add_axes((0.02, 0.67, 0.96, 0.13)), card)
    _result(fig, card)
    return fig


def write_thumbnails(folder: Path = WORKFLOWS) -> list[Path]:
    from video_reward_lora.reward.files import atomic_path

    names = sorted(path.stem for path in folder.glob("*.json"))
    missing = [name for name in names if name not in CARDS]
    if missing:
        raise KeyError(f"no thumbnail card for {missing} in scripts/workflow_thumbnails.py CARDS")
    written = []
    for name in names:
        target = folder / f"{name}.jpg"
        with atomic_path(target, suffix=".jpg") as temporary:
            render(CARDS[name]).savefig(temporary, format="jpg", dpi=DPI, pil_kwargs={"quality": 85, "optimize": True})
        written.append(target)
    return written


if __name__ == "__main__":
    for path in write_thumbnails():
        print(f"wrote {path.relative_to(WORKFLOWS.parent)} ({path.stat().st_size // 1024} KB)")
