"""What a person sees of a job, read from its files: one paragraph on where it stands, and its curves as an image
(a training job's metrics per step; a preference-pair job's video scores per prompt)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...reward.plot import Panel, Series, draw_panels
from ..curves import headline, training_curves
from .jobs import Job


def describe(job: Job, status: dict[str, Any]) -> str:
    """One paragraph on where a job stands."""
    lines = [f"job {job.id}: {status.get('state')} ({status.get('reason', '')})"]
    if job.builds_pairs():
        return "\n".join(lines + _pairs_lines(job, status))
    if "max_steps" in status:
        lines.append(f"step {status.get('step', 0)}/{status['max_steps']}")
    if "shift" in status:
        lines.append(f"sampling shift {status['shift']:g}, experts switch at timestep {status['boundary'] * 1000:g}")
    metrics = job.metrics()
    key, held, label = headline(metrics)
    steps = [m for m in metrics if "loss" in m]
    if steps:
        last = steps[-1]
        lines.append(f"loss {last['loss']:.5g}, {label} {last[key]:.5g}, grad norm {last['grad_norm']:.3g}, "
                     f"{last['time']:.2f} s/step, peak memory {last['memory_mib']:.0f} MiB")
    held_out = {label: held, **({"reward": "val_reward"} if held != "val_reward" else {})}
    for name, metric in held_out.items():
        values = [m[metric] for m in metrics if metric in m]
        if values:
            lines.append(f"held-out {name}: {values[0]:.5g} at the start, {values[-1]:.5g} now")
    return "\n".join(lines + _guard_lines(metrics))


def _guard_lines(metrics: list[dict[str, Any]]) -> list[str]:
    """The judge (start, best, now) and the last value of each guard measure."""
    lines = []
    judged = [m for m in metrics if "judge" in m]
    if judged:
        best = max(judged, key=lambda m: m["judge"])
        lines.append(f"judge: {judged[0]['judge']:.5g} at the start, best {best['judge']:.5g} at step {best['step']}, "
                     f"{judged[-1]['judge']:.5g} now")
    last = {key: m[key] for m in metrics for key in ("drift", "dynamism", "dynamism_base", "diversity") if key in m}
    if last:
        lines.append(", ".join(f"{key.replace('_', ' ')} {value:.4g}" for key, value in last.items()))
    return lines


def _pairs_lines(job: Job, status: dict[str, Any]) -> list[str]:
    lines = []
    if "videos" in status:
        lines.append(f"videos made: {status.get('video', 0)}/{status['videos']}")
    scores = [m["score"] for m in job.metrics() if "score" in m]
    if scores:
        lines.append(f"scores so far: {min(scores):.5g} to {max(scores):.5g} (mean {sum(scores) / len(scores):.5g})")
    if status.get("state") == "finished":
        lines.append(f"dataset: {status.get('dataset')} ({status.get('pairs')} pairs)")
    return lines


def job_curves(job: Job) -> np.ndarray:
    """`[H,W,3]` uint8: a training job's curves, or a pair job's video scores by prompt."""
    if not job.builds_pairs():
        settings = job.settings()
        return training_curves(job.metrics(), settings.get("loss", "negative"), settings.get("max_grad_norm"))
    made = [m for m in job.metrics() if "score" in m]
    series = [Series("video scores", [m["score"] for m in made], [m["prompt"] + 1 for m in made], points=True)]
    return draw_panels([Panel(series, "score of each video, by prompt (pairs: within a prompt)", "prompt", "score",
                              empty_text="waiting for the first video")])
