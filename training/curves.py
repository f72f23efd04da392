"""The curves of a job as one image: the rewards (training batches and held-out prompts on one scale), the loss where
it says more than the reward, and the gradient norm against its clipping threshold."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..reward.plot import Panel, Series, draw_panels


# The metric each method's steps are judged by, its held-out twin (as the job's metrics name them) and its label:
# reward backpropagation's reward, DPO's implicit accuracy.
HEADLINES = (("reward", "val_reward", "reward"), ("implicit_accuracy", "val_implicit_accuracy", "implicit accuracy"))


def headline(metrics: Sequence[dict[str, Any]]) -> tuple[str, str, str]:
    """(step metric, held-out metric, label) of the method whose metrics these are: the one whose step metric is
    there, else whose held-out metric is (a DPO run also records the held-out reward), else reward."""
    for index in (0, 1):
        for found in reversed(HEADLINES):
            if any(found[index] in m for m in metrics):
                return found
    return HEADLINES[0]


def curve_panels(metrics: Sequence[dict[str, Any]], loss: str = "negative", max_grad_norm: float | None = None) -> list[Panel]:
    """The panels of `training_curves`, for a job trained with the loss form `loss` and clipping at `max_grad_norm`
    (its settings as recorded; None: no threshold drawn).

    The first panel is the method's headline metric (`headline`) on training batches and held-out data. With reward
    backpropagation's `negative` loss (the default) the loss is `−reward·scale`, an exact mirror of the training reward,
    so it gets no panel of its own; the reward panel says so. DPO's loss is drawn, and its held-out reward where the
    run scores validation prompts. The `target` loss `|reward − target|·scale` is not a function of the batch's mean
    reward, so it is drawn. The gradient norm (before clipping, with the threshold) is what the
    loss adds: whether updates are clipped, vanish as the reward saturates, or spike before a divergence."""
    key, held, label = headline(metrics)
    steps = [m for m in metrics if "loss" in m]
    held_out = [m for m in metrics if held in m]
    x = [m["step"] for m in steps]
    mirror = key == "reward" and loss == "negative"
    waiting = "waiting for the first step"
    panels = [Panel(
        [Series(f"training {label}", [m[key] for m in steps], x),
         Series(f"held-out {label}", [m[held] for m in held_out], [m["step"] for m in held_out], points=True)],
        label + (" (loss = −reward × scale)" if mirror else ""), "step", label, empty_text=waiting)]
    rewards = [m for m in metrics if "val_reward" in m]
    if key != "reward" and rewards:  # DPO judged by the reward mix on held-out prompts too
        panels.append(Panel([Series("held-out reward", [m["val_reward"] for m in rewards], [m["step"] for m in rewards],
                                    points=True)], "reward of held-out prompts' samples", "step", "reward"))
    if not mirror:
        panels.append(Panel([Series("loss", [m["loss"] for m in steps], x)], "loss", "step",
                            "|reward − target| × scale" if key == "reward" else "DPO loss", empty_text=waiting))
    panels += guard_panels(metrics)
    norms = [m.get("grad_norm", float("nan")) for m in steps]
    title, clip = "gradient norm (before clipping)", {}
    if max_grad_norm is not None:
        if max((n for n in norms if math.isfinite(n)), default=0.0) >= max_grad_norm / 2:
            clip = {f"clipping threshold {max_grad_norm:g}": max_grad_norm}
        else:  # a line far above the data would flatten it
            title = f"gradient norm (below the clipping threshold {max_grad_norm:g})"
    panels.append(Panel([Series("gradient norm", norms, x)], title, "step", "gradient norm", clip, empty_text=waiting))
    return panels


def training_curves(metrics: Sequence[dict[str, Any]], loss: str = "negative", max_grad_norm: float | None = None) -> np.ndarray:
    """`[H,W,3]` uint8 panels over the training steps (see `curve_panels`)."""
    return draw_panels(curve_panels(metrics, loss, max_grad_norm))


# The guards' measures (engine.guards, methods.reward_backprop), each on its own axis: (metric, panel title, y label).
GUARD_PANELS = (
    ("drift", "drift: squared difference from the LoRA-off prediction", "mean squared difference"),
    ("dynamism", "dynamism of the training samples", "mean squared frame change"),
    ("diversity", "diversity across seeds (judge embeddings)", "mean cosine distance"),
)


def guard_panels(metrics: Sequence[dict[str, Any]]) -> list[Panel]:
    """The judge's score per evaluation with its best marked, and each guard measure the run recorded."""
    panels = []
    judged = [m for m in metrics if "judge" in m]
    if judged:
        best = max(judged, key=lambda m: m["judge"])
        panels.append(Panel([Series("judge", [m["judge"] for m in judged], [m["step"] for m in judged], points=True),
                             Series(f"best (step {best['step']})", [best["judge"]], [best["step"]], points=True)],
                            f"held-out judge (best at step {best['step']})", "step", "judge score"))
    for key, title, label in GUARD_PANELS:
        recorded = [m for m in metrics if key in m]
        if not recorded:
            continue
        series = [Series(key, [m[key] for m in recorded], [m["step"] for m in recorded], points=key == "diversity")]
        base = [m for m in recorded if f"{key}_base" in m]
        if base:
            series.append(Series("LoRA off, same noise", [m[f"{key}_base"] for m in base], [m["step"] for m in base]))
        panels.append(Panel(series, title, "step", label))
    return panels
