"""Guards against reward hacking on tiny models: a held-out judge exposes a hacked reward (the training reward keeps
rising while the judge falls), early stopping ends the run within `patience` evaluations of the judge's best and
exports exactly the best LoRA, resume and cancel keep the judge watch and the best LoRA, the drift penalty keeps the
model near its base, and the dynamism guard keeps the motion of its videos."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from video_reward_lora.reward.files import read_safetensors
from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.config import TrainConfig
from video_reward_lora.training.engine.guards import JudgeWatch
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.jobs.jobs import Job, create_job
from video_reward_lora.training.jobs.runner import run_job

PROMPTS = ["a red ball", "a blue sky", "a cat in a field", "a dog on the field"]
HELD_OUT = ["a red cat at dusk", "a sunny field", "a ball rolling"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cogvideox": write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"),
            "rewards": write_reward_models(root / "reward_models", ("aesthetic_v2.5", "hps_v2.1"))}


def guarded(models: dict[str, Path], **overrides) -> TrainConfig:
    """Train on the tiny aesthetic reward, judged by the tiny HPS (a reward it can hack: see the unguarded run)."""
    settings = dict(family="cogvideox", model={"folder": str(models["cogvideox"])}, rewards=[{"key": "aesthetic_v2.5"}],
                    reward_roots=[str(models["rewards"])], prompts=PROMPTS, validation_prompts=HELD_OUT,
                    validation_every=2, height=32, width=32, frames=9, steps=4, rank=4, alpha=4.0, learning_rate=1e-2,
                    max_steps=20, checkpoint_every=100, sample_every=100, gradient_checkpointing=False,
                    judge=[{"key": "hps_v2.1"}])
    return TrainConfig.from_dict({**settings, **overrides})


def trained(root: Path, config: TrainConfig) -> Job:
    job = create_job(root, config, None)
    run_job(job.path)
    return job


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path)[0]


def judged(job: Job) -> dict[int, float]:
    return {m["step"]: m["judge"] for m in job.metrics() if "judge" in m}


@pytest.fixture(scope="module")
def unguarded(models, tmp_path_factory) -> Job:
    return trained(tmp_path_factory.mktemp("unguarded"), guarded(models, checkpoint_every=2, max_steps=16))


def test_the_judge_exposes_a_hacked_reward(unguarded):
    """Without early stopping the training reward rises to the end while the judge peaks and then falls."""
    rewards = [m["reward"] for m in unguarded.metrics() if "reward" in m]
    judge = judged(unguarded)
    best = max(judge, key=judge.get)
    assert rewards[-1] > rewards[0] + 0.01 and 0 < best < 16
    assert judge[16] < judge[best] - 0.01, judge  # measured: best 0.00287 at step 12, -0.0182 at step 16
    status = unguarded.status()
    assert status["state"] == "finished" and status["best_step"] == best
    assert f"the LoRA is step {best}'s, the judge's best" in status["reason"]


def test_early_stopping_stops_within_patience_and_exports_the_best_lora(models, unguarded, tmp_path):
    judge = judged(unguarded)
    best = max(judge, key=judge.get)
    job = trained(tmp_path, guarded(models, patience=2, checkpoint_every=1))
    status = job.status()
    assert status["state"] == "finished" and status["step"] == best + 2 * 2  # 2 evaluations 2 steps apart
    assert status["reason"].startswith(f"stopped early at step {best + 4}: the judge has not improved for 2 evaluations")
    assert status["best_step"] == best and judged(job) == {s: v for s, v in judge.items() if s <= best + 4}
    exported = lora_tensors(job.lora)
    for reference in (job.path / "best" / "lora.safetensors", job.checkpoints / f"step-{best:06d}" / "lora.safetensors",
                      unguarded.checkpoints / f"step-{best:06d}" / "lora.safetensors"):
        theirs = lora_tensors(reference)
        assert exported.keys() == theirs.keys() and all(torch.equal(exported[k], theirs[k]) for k in exported)
    assert json.loads((job.path / "best" / "best.json").read_text())["step"] == best


def test_resume_keeps_the_judge_watch_and_cancel_keeps_the_best(models, unguarded, tmp_path, monkeypatch):
    judge = judged(unguarded)
    best = max(judge, key=judge.get)
    config = guarded(models, patience=2, checkpoint_every=1)
    job = create_job(tmp_path, config, None)
    original = Job.append_metrics

    def cancel_after_first_miss(self, record):
        original(self, record)
        if record.get("step") == best + 2 and "judge" in record:  # one evaluation without improvement
            self.request_cancel()

    monkeypatch.setattr(Job, "append_metrics", cancel_after_first_miss)
    assert run_job(job.path) == "cancelled"
    watch = json.loads((job.latest_checkpoint() / "extra.json").read_text())["judge_watch"]
    assert watch["best_step"] == best and watch["since_best"] == 1
    assert json.loads((job.path / "best" / "best.json").read_text())["step"] == best
    monkeypatch.setattr(Job, "append_metrics", original)
    job.clear_cancel()
    assert run_job(job.path) == "finished" and job.status()["step"] == best + 4  # the counter went on from 1
    assert judged(job) == {s: v for s, v in judge.items() if s <= best + 4}


def test_judge_drop_and_watch_state():
    watch = JudgeWatch(patience=0, drop=0.1)
    assert watch.update(0, 1.0) == (True, "") and watch.update(2, 0.95) == (False, "")
    improved, stop = watch.update(4, 0.85)
    assert not improved and stop.startswith("the judge fell to 0.85, more than 0.1 of its best 1 (step 0)")
    again = JudgeWatch.from_state(watch.state(), 0, 0.1)
    assert (again.best, again.best_step, again.since_best) == (1.0, 0, 2)


def test_guards_need_what_they_measure(models):
    for change, message in (({"patience": 2, "judge": []}, "patience, judge_drop and diversity_seeds act on the judge"),
                            ({"validation_prompts": []}, "a judge scores the validation prompts"),
                            ({"judge_drop": 1.5}, "judge_drop is a fraction"), ({"diversity_seeds": 1}, "at least 2 seeds"),
                            ({"dynamism_weight": 1.0}, "motion needs 2 decoded frames"),
                            ({"judge": [{"key": "nope"}]}, "unknown reward 'nope'")):
        with pytest.raises(ValueError, match=message):
            guarded(models, **change)


def test_the_drift_penalty_keeps_the_model_near_its_base(models, tmp_path):
    """Two runs from one seed; the unguarded one measures its drift with a weight too small to act (1e-12)."""
    settings = dict(judge=[], validation_prompts=[], max_steps=10)
    free = trained(tmp_path / "free", guarded(models, drift_weight=1e-12, **settings)).metrics()
    held = trained(tmp_path / "held", guarded(models, drift_weight=1e-3, **settings)).metrics()
    gain_free, gain_held = free[-1]["reward"] - free[0]["reward"], held[-1]["reward"] - held[0]["reward"]
    # measured: reward gain 0.0162 free / 0.0149 held; drift at step 10: 0.642 free / 0.157 held
    assert gain_held > 0.8 * gain_free > 0 and held[-1]["drift"] < 0.5 * free[-1]["drift"]


def test_the_dynamism_guard_keeps_the_motion_a_static_reward_removes(models, tmp_path):
    """The training reward prefers still videos (minus their dynamism); the judge measures the dynamism of held-out
    samples (every frame decoded)."""
    settings = dict(rewards=[{"key": "dynamism", "weight": -1.0}], judge=[{"key": "dynamism"}], decoded_latents=2,
                    validation_every=8, max_steps=8)
    free = judged(trained(tmp_path / "free", guarded(models, **settings)))
    held = judged(trained(tmp_path / "held", guarded(models, dynamism_weight=1.0, **settings)))
    # measured: held-out dynamism 0.00709 at the start; after 8 steps 0.00424 free (-40%), 0.00730 guarded (+3%)
    assert free[8] < 0.8 * free[0] and held[8] > 0.9 * held[0]


def test_diversity_is_the_spread_of_the_judges_embeddings_across_seeds(models, tmp_path):
    """With 2 seeds the diversity of a prompt is 1 − cos of the two first frames' embeddings by the judge's encoder."""
    from video_reward_lora.training.build import load_family, load_reward_mix
    from video_reward_lora.training.engine.guards import DIVERSITY_NOISE, embedder, sample_first_frame
    from video_reward_lora.reward.seeds import seeded_generator

    config = guarded(models, diversity_seeds=2, max_steps=1, validation_every=1)
    job = trained(tmp_path, config)
    recorded = [m["diversity"] for m in job.metrics() if "diversity" in m]
    family = load_family(config, torch.float32, torch.device("cpu"))
    model = embedder(load_reward_mix(config.judge, config.reward_roots, torch.float32, torch.device("cpu")))
    spreads = []
    for index, prompt in enumerate(HELD_OUT):
        with torch.no_grad():
            frames = [sample_first_frame(family, prompt, config, seeded_generator(config.seed, DIVERSITY_NOISE, index, k))
                      for k in range(2)]
            first, second = torch.nn.functional.normalize(model.embed_frames(torch.cat(frames)), dim=-1)
        spreads.append(1 - float(first @ second))
    assert len(recorded) == 2 and recorded[0] == pytest.approx(sum(spreads) / len(spreads), rel=1e-5) and recorded[0] > 0


def test_training_status_draws_the_guards():
    from video_reward_lora.training.curves import curve_panels

    metrics = [{"step": 0, "judge": 0.1, "diversity": 0.3},
               {"step": 1, "loss": -1.0, "reward": 1.0, "grad_norm": 0.1, "drift": 0.01, "dynamism": 0.004,
                "dynamism_base": 0.005},
               {"step": 2, "loss": -1.1, "reward": 1.1, "grad_norm": 0.1, "drift": 0.02, "dynamism": 0.003,
                "dynamism_base": 0.005, "judge": 0.05, "diversity": 0.2}]
    titles = [panel.title for panel in curve_panels(metrics)]
    assert titles[1:5] == ["held-out judge (best at step 0)", "drift: squared difference from the LoRA-off prediction",
                           "dynamism of the training samples", "diversity across seeds (judge embeddings)"]
    dynamism = curve_panels(metrics)[3]
    assert [s.label for s in dynamism.series] == ["dynamism", "LoRA off, same noise"]
