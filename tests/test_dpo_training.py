"""Diffusion-DPO training on tiny models: the LoRA-off reference is the base transformer exactly, training on a
preference dataset raises the implicit accuracy on held-out pairs, resume repeats the uninterrupted losses, and a
dataset that cannot train is refused before any model loads."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from video_reward_lora.training.build import load_family
from video_reward_lora.training.cli import main
from video_reward_lora.training.config import TrainConfig
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.families.tiny_wan import write_wan22
from video_reward_lora.training.jobs.jobs import Job, create_job
from video_reward_lora.training.jobs.runner import run_job
from video_reward_lora.training.lora.adapters import disabled
from video_reward_lora.training.methods.dpo import DiffusionDPO
from video_reward_lora.training.preference.dataset import DatasetInfo, NewClip, PreferenceDataError, write_dataset
from video_reward_lora.training.preference.pairs import ScoredPair
from video_reward_lora.training.preference.video import read_mp4

from test_training import _launch

FRAMES, SIZE = 9, 32
CAPTIONS = ["a red ball", "a blue sky", "a cat in a field", "a dog on the field", "a ball rolling", "a sunny field"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cogvideox": write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"), "wan2.2": write_wan22(root / "wan")}


def write_pairs(folder: Path, family: str, latent_shape: tuple[int, ...], pairs: int = 6, latents: bool = True) -> Path:
    """`pairs` pairs of one caption each: winners' latents around +0.5, losers' around -0.5 (a preference the
    transformer can learn and carry over to held-out pairs)."""
    generator = torch.Generator().manual_seed(0)
    clips = []
    for index in range(2 * pairs):
        sign = 1.0 if index % 2 == 0 else -1.0
        frames = torch.rand(FRAMES, 3, SIZE, SIZE, generator=generator)
        value = 0.5 * sign + 0.3 * torch.randn(latent_shape, generator=generator) if latents else None
        clips.append(NewClip(frames, CAPTIONS[(index // 2) % len(CAPTIONS)], value))
    info = DatasetInfo(family=family, frames=FRAMES, height=SIZE, width=SIZE, fps=8.0)
    write_dataset(folder, info, clips, [ScoredPair(2 * i, 2 * i + 1, 1.0) for i in range(pairs)])
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs", "cogvideox", (3, 16, SIZE // 8, SIZE // 8))


def dpo_config(models: dict[str, Path], dataset: Path, family: str = "cogvideox", **overrides) -> TrainConfig:
    model = {k: str(v) for k, v in models[family].items()} if family == "wan2.2" else {"folder": str(models[family])}
    settings = dict(family=family, model=model, method="dpo", dataset=str(dataset), validation_pairs=2, validation_every=1000,
                    height=SIZE, width=SIZE, frames=FRAMES, rank=4, alpha=4.0, learning_rate=3e-3, max_steps=8,
                    checkpoint_every=100, gradient_checkpointing=False, batch_size=2)
    return TrainConfig.from_dict({**settings, **overrides})


def test_the_lora_off_reference_is_the_frozen_base_transformer(models, dataset):
    config = dpo_config(models, dataset, learning_rate=5e-2)
    trainer = DiffusionDPO.for_job(config, torch.float32, torch.device("cpu"))
    trainer.train_step()
    frozen = load_family(config, torch.float32, torch.device("cpu"))
    latents = torch.randn(2, 3, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    text = trainer.family.encode(CAPTIONS[:2])
    condition = trainer.family.conditioning(latents, None)
    t = torch.tensor(500)
    with torch.no_grad():
        policy = trainer.family.predict(latents, t, text, condition)
        with disabled(trainer.transformer):
            reference = trainer.family.predict(latents, t, text, condition)
        base = frozen.predict(latents, t, text, condition)
    assert not torch.equal(policy, base)  # the trained LoRA changes the prediction
    assert torch.equal(reference, base)
    assert all(p.requires_grad for p in trainer.params.values())  # switching the LoRA back on keeps it trainable


def test_dpo_raises_the_held_out_implicit_accuracy_and_resumes_exactly(models, dataset, tmp_path, monkeypatch):
    config = dpo_config(models, dataset)
    (tmp_path / "dpo.json").write_text(config.to_json())
    assert main(["run", "--config", str(tmp_path / "dpo.json"), "--output", str(tmp_path / "a")]) == 0  # the CLI
    straight = Job(tmp_path / "a")
    metrics = straight.metrics()
    held_out = [m["val_implicit_accuracy"] for m in metrics if "val_implicit_accuracy" in m]
    # 4 draws on each of 2 held-out pairs: none preferred at step 0 (the LoRA starts at zero: policy = reference), all after
    assert held_out[0] == 0.0 and held_out[-1] == 1.0
    training = [m["implicit_accuracy"] for m in metrics if "implicit_accuracy" in m]
    assert sum(training[-3:]) / 3 == 1.0
    assert {"reward_margin", "drift"} <= set(metrics[-1]) and metrics[-1]["drift"] > 0
    status = straight.status()
    assert status["state"] == "finished" and "implicit_accuracy" in status

    interrupted = create_job(tmp_path / "b", config)
    with monkeypatch.context() as patch:
        patch.setattr(Job, "cancel_requested", lambda self: len(self.metrics()) >= 4)  # step 0 evaluation + 3 steps
        assert run_job(interrupted.path) == "cancelled"
    assert interrupted.latest_checkpoint().name == "step-000003"
    assert run_job(interrupted.path) == "finished"
    losses = lambda job: [(m["step"], m.get("loss"), m.get("val_implicit_accuracy")) for m in job.metrics()]  # noqa: E731
    assert losses(interrupted) == losses(straight)


def test_two_data_parallel_processes_end_with_one_lora(models, dataset, tmp_path):
    status, _ = _launch(dpo_config(models, dataset, max_steps=3, batch_size=1), tmp_path / "ddp")
    assert status["state"] == "finished"
    checksums = status["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1] != 0
    job = Job(tmp_path / "ddp")
    assert job.lora.is_file() and status["lora"] == str(job.lora)
    steps = [m for m in job.metrics() if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and 0 <= m["implicit_accuracy"] <= 1 for m in steps)


def test_clips_without_latents_are_encoded_with_the_vae(models, tmp_path):
    folder = write_pairs(tmp_path / "mp4_only", "cogvideox", (3, 16, 4, 4), pairs=3, latents=False)
    trainer = DiffusionDPO.for_job(dpo_config(models, folder, validation_pairs=1), torch.float32, torch.device("cpu"))
    frames = read_mp4(folder / "clips" / "000000.mp4")
    vae = trainer.family.vae
    expected = vae.encode(frames.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    assert torch.allclose(trainer.latents[0], expected[0].permute(1, 0, 2, 3), atol=1e-6)
    assert trainer.latents[0].shape == (3, 16, 4, 4)
    assert torch.isfinite(torch.tensor(trainer.train_step()["loss"]))


def test_wan_dpo_trains_the_drawn_expert_on_flow_targets(models, tmp_path):
    folder = write_pairs(tmp_path / "wan", "wan2.2", (16, 3, 4, 4), pairs=3)
    trainer = DiffusionDPO.for_job(dpo_config(models, folder, "wan2.2", expert="high", validation_pairs=1, max_steps=2),
                                   torch.float32, torch.device("cpu"))
    assert trainer.prediction_type == "flow"
    assert {trainer.family.expert(t) for t in trainer.timesteps} == {"high"}
    assert bool((trainer.levels > 0).all() and (trainer.levels <= 1).all())
    records = [trainer.train_step() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.params.values())


def test_bad_datasets_are_refused_before_any_model_loads(models, dataset, tmp_path, monkeypatch, capsys):
    import video_reward_lora.training.methods.dpo as dpo

    monkeypatch.setattr(dpo, "load_family", lambda *a, **k: pytest.fail("a model loaded"))
    other = write_pairs(tmp_path / "wan_made", "wan2.2", (16, 3, 4, 4), pairs=2)
    one_video = tmp_path / "one_video"
    one_video.mkdir()
    for name in ("metadata.json", "dataset.json"):
        (one_video / name).write_text((dataset / name).read_text())
    metadata = json.loads((dataset / "metadata.json").read_text())[:1]
    (one_video / "metadata.json").write_text(json.dumps(metadata))
    (one_video / "pair.json").write_text(json.dumps([{"video1": 0, "video2": 0}]))
    (one_video / "clips").mkdir()
    (one_video / "clips" / "000000.mp4").write_bytes((dataset / "clips" / "000000.mp4").read_bytes())
    out_of_range = tmp_path / "out_of_range"
    out_of_range.mkdir()
    for name in ("metadata.json", "dataset.json"):
        (out_of_range / name).write_text((dataset / name).read_text())
    (out_of_range / "clips").symlink_to(dataset / "clips")
    (out_of_range / "pair.json").write_text(json.dumps([{"video1": 0, "video2": 12}]))
    cases = [
        ({"dataset": ""}, ValueError, "method 'dpo' needs a preference dataset folder"),
        ({"dataset": str(tmp_path / "missing")}, PreferenceDataError, "does not exist"),
        ({"dataset": str(other)}, PreferenceDataError, "made with wan2.2; it cannot train cogvideox"),
        ({"dataset": str(one_video)}, PreferenceDataError, "needs at least 2 videos, it has 1"),
        ({"dataset": str(out_of_range)}, PreferenceDataError, "pair 0 has video2 = 12, outside the 12 videos"),
        ({"frames": 13}, PreferenceDataError, "the training takes 13 frames of 32x32"),
        ({"validation_pairs": 6}, PreferenceDataError, "validation_pairs 6"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            dpo_config(models, overrides.pop("dataset", dataset), **overrides)
    config_file = tmp_path / "dpo.json"
    config_file.write_text(json.dumps({**json.loads(dpo_config(models, dataset).to_json()), "dataset": str(other)}))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(config_file), "--output", str(tmp_path / "job")])
    assert exit_info.value.code == 2 and "cannot train cogvideox" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()
