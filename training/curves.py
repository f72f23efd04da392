"""The curves of a job as one image: training reward, loss, and held-out reward, one panel each."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..reward.plot import line_chart


def training_curves(metrics: Sequence[dict[str, Any]], size: tuple[int, int] = (640, 240)) -> np.ndarray:
    """`[H,W,3]` uint8 panels over the training steps: the batch reward, the loss, the held-out reward."""
    steps = [m for m in metrics if "loss" in m]
    held_out = [m for m in metrics if "val_reward" in m]
    panels = [
        ("training reward", steps, "reward"),
        ("loss", steps, "loss"),
        ("held-out reward (fixed prompts and seeds)", held_out, "val_reward"),
    ]
    return np.concatenate([line_chart({title: [m[key] for m in rows]}, title=title, x_label="step",
                                      x_values=[m["step"] for m in rows], size=size) for title, rows, key in panels], axis=0)
