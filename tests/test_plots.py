"""The charts and frame grids the pack draws (reward.plot, training.curves), and quiet library output in the processes
the pack owns (reward.quiet)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from video_reward_lora.reward.plot import (Panel, Series, draw_panels, ema, frame_grid, panels_figure, save_frames, score_panel,
                                           typical_limits)
from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.config import TrainConfig
from video_reward_lora.training.curves import curve_panels, training_curves
from video_reward_lora.training.families.tiny import write_cogvideox_fun

HPS_NORM = (0.27, 0.02)


def _tick_values(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def _metrics(steps: int, every: int = 5) -> list[dict]:
    rows = [{"step": 0, "val_reward": 5.0}]
    for step in range(1, steps + 1):
        rows.append({"step": step, "loss": -(5 + 0.01 * step), "reward": 5 + 0.01 * step, "grad_norm": 0.2 + 0.01 * step})
        if step % every == 0:
            rows[-1]["val_reward"] = 5 + 0.009 * step
    return rows


def _settings(**overrides) -> tuple[str, float]:
    """(loss, max_grad_norm) of a training config with `overrides`."""
    config = TrainConfig.from_dict({"family": "cogvideox", "model": {"folder": "x"}, "prompts": ["a"], **overrides})
    return config.loss, config.max_grad_norm


def test_few_frames_get_integer_ticks_and_labelled_axes():
    # 5 frames once gave ticks at 0.8, 1.6, 3.2; steps 1..9 gave 4.8, 8.6
    panel = score_panel("HPS v2.1", [0, 1, 2, 3, 4], [0.2512, 0.2577, 0.2491, 0.2533, 0.2561])
    ax = panels_figure([panel], (640, 400)).axes[0]
    ticks = _tick_values(ax)
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
    assert ax.get_xlabel() == "frame" and ax.get_ylabel() == "score" and ax.get_title(loc="left").startswith("HPS v2.1: ")
    assert [t.get_text() for t in ax.figure.legends[0].get_texts()] == ["per frame", "mean"]
    for ax in panels_figure(curve_panels(_metrics(9)), (640, 680)).axes:
        ticks = _tick_values(ax)
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
        assert ax.get_xlabel() == "step" and ax.get_ylabel()


def test_chart_is_an_rgb_image_of_the_asked_size_with_content():
    image = draw_panels([score_panel("HPS v2.1", list(range(49)), [0.25 + 0.001 * (i % 7) for i in range(49)])])
    assert image.shape == (400, 640, 3) and image.dtype == np.uint8
    assert (image < 200).any(-1).mean() > 0.02  # lines, ticks and text, not a blank canvas
    curves = training_curves(_metrics(30), *_settings())
    assert curves.shape == (2 * 340, 640, 3) and (curves < 200).any(-1).mean() > 0.02


def test_series_on_one_axis_and_two_videos_of_one_reward_share_the_y_scale():
    panel = Panel([Series("base", [0.25, 0.26, 0.255]), Series("reward LoRA", [0.28, 0.29, 0.285])])
    ax = panels_figure([panel], (640, 400)).axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0.25 and hi >= 0.29 and len(ax.get_lines()) == 2
    # the compare workflow: base and LoRA charts come from two Score Video nodes; typical scores give both one scale
    base = panels_figure([score_panel("HPS v2.1", list(range(8)), [0.25 + 0.001 * i for i in range(8)], HPS_NORM)],
                         (640, 400)).axes[0]
    lora = panels_figure([score_panel("HPS v2.1", list(range(8)), [0.29 - 0.002 * i for i in range(8)], HPS_NORM)],
                         (640, 400)).axes[0]
    assert base.get_ylim() == lora.get_ylim() == pytest.approx((0.21, 0.33))
    # a score outside the reward's typical band widens the scale to show it
    lo, hi = typical_limits([0.25, 0.40], *HPS_NORM)
    assert lo == pytest.approx(0.21) and hi > 0.40


def test_ema_matches_its_closed_form():
    values = np.random.default_rng(0).normal(size=50)
    span = 9
    a = 2 / (span + 1)
    t = np.arange(len(values))
    # s_t = (1-a)^t x_0 + sum_{i=1..t} a (1-a)^(t-i) x_i
    expected = [(1 - a) ** k * values[0] + sum(a * (1 - a) ** (k - i) * values[i] for i in range(1, k + 1)) for k in t]
    assert np.allclose(ema(values.tolist(), span), expected, rtol=0, atol=1e-12)


def test_long_runs_are_smoothed_over_faint_raw_points():
    short = panels_figure([Panel([Series("reward", list(range(20)))])], (640, 400)).axes[0]
    assert len(short.get_lines()) == 1
    long = panels_figure([Panel([Series("reward", [float(i % 5) for i in range(200)])])], (640, 400)).axes[0]
    raw, smooth = long.get_lines()
    assert raw.get_alpha() == pytest.approx(0.3) and smooth.get_alpha() is None
    assert "EMA over 8" in smooth.get_label()  # 200 / 25


def test_training_curves_show_the_loss_only_where_it_is_not_the_mirrored_reward():
    negative = curve_panels(_metrics(12), *_settings())
    assert [p.y_label for p in negative] == ["reward", "gradient norm"]
    assert "−reward × scale" in negative[0].title
    assert [s.label for s in negative[0].series] == ["training reward", "held-out reward"]  # one axis, one scale
    assert negative[1].lines == {"clipping threshold 0.3": 0.3}  # norms of 0.2 to 0.32 reach it
    target = curve_panels(_metrics(12), *_settings(loss="target", max_grad_norm=10.0))
    assert [p.title for p in target] == ["reward", "loss", "gradient norm (below the clipping threshold 10)"]
    assert target[2].lines == {}
    empty = draw_panels(curve_panels([]))  # a job that has not finished a step yet
    assert empty.shape == (2 * 340, 640, 3)


def test_frame_grid_enlarges_small_frames_and_lays_them_out_in_rows():
    frames = np.random.default_rng(1).integers(0, 256, size=(6, 32, 48, 3), dtype=np.uint8)
    grid = frame_grid(frames, columns=3)
    gap, factor = 8, 8  # 32 px high -> at least 256: a whole factor of 8, nearest neighbour
    assert grid.shape == (2 * (256 + gap) + gap, 3 * (384 + gap) + gap, 3)
    tile = grid[gap + 256 + gap : gap + 256 + gap + 256, gap + 384 + gap : gap + 2 * 384 + gap]  # row 1, column 1
    assert np.array_equal(tile, frames[4].repeat(factor, 0).repeat(factor, 1))
    square = frame_grid(frames[:4])
    assert square.shape[1] == 2 * (384 + gap) + gap  # about square: 2 x 2
    captioned = frame_grid(frames[:2], ["before: a red cat in a sunny field", "after: a red cat in a sunny field"])
    assert captioned.shape[0] > 256 + 2 * gap and (captioned[gap : gap + 18] < 100).any()  # text above the tiles


def test_save_frames_writes_the_grid_atomically(tmp_path):
    path = tmp_path / "samples" / "latest.png"
    save_frames(torch.rand(3, 3, 64, 64), path, ["a", "b", "c"], columns=3)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (3 * (256 + 8) + 8, 8 + 22 + 256 + 8)
    assert [p.name for p in path.parent.iterdir()] == ["latest.png"]


def test_the_cli_shows_our_progress_and_results_without_library_noise(tmp_path):
    folder = write_cogvideox_fun(tmp_path / "models" / "CogVideoX-Fun-V1.1-2b-InP")
    rewards = write_reward_models(tmp_path / "models" / "reward_models", ("aesthetic_v2.5",))
    config = TrainConfig.from_dict(dict(
        family="cogvideox", model={"folder": str(folder)}, rewards=[{"key": "aesthetic_v2.5"}], reward_roots=[str(rewards)],
        prompts=["a red ball"], height=32, width=32, frames=9, steps=2, rank=4, alpha=4.0, max_steps=1,
        checkpoint_every=1, sample_every=1, gradient_checkpointing=False,
    ))
    (tmp_path / "train.json").write_text(config.to_json())
    result = subprocess.run(
        [sys.executable, "-m", "video_reward_lora.training.cli", "run", "--config", str(tmp_path / "train.json"),
         "--output", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    shown = result.stdout + result.stderr
    assert result.returncode == 0, shown[-3000:]
    for noise in ("config attributes", "Loading checkpoint shards", "Loading pipeline components", "Loading weights",
                  "Setting accelerator to CPU"):
        assert noise not in shown
    assert "training run" in shown and "1/1" in shown and "reward=" in shown  # our progress bar, with the step's numbers
    assert (tmp_path / "run" / "lora.safetensors").is_file()


def test_dpo_curves_show_implicit_accuracy_and_the_loss():
    """A DPO job's metrics (no reward) draw its implicit accuracy, training and held out, and its loss."""
    rows = [{"step": 0, "val_implicit_accuracy": 0.0}]
    rows += [{"step": s, "loss": 0.69 - 0.05 * s, "implicit_accuracy": min(1.0, 0.2 * s), "grad_norm": 0.1} for s in range(1, 9)]
    rows[-1]["val_implicit_accuracy"] = 1.0
    first, loss_panel, _ = curve_panels(rows, "negative", 0.3)
    assert [series.label for series in first.series] == ["training implicit accuracy", "held-out implicit accuracy"]
    assert first.series[1].y == [0.0, 1.0] and loss_panel.series[0].y == [r["loss"] for r in rows[1:]]
    assert training_curves(rows, "negative", 0.3).shape[2] == 3
