"""Job folders that always recover: all-or-nothing creation, nothing left behind by a full disk on any write, a job
with no process behind it reads as failed, a changed config resumes, replaces or is refused, and the foreground CLI
keeps its log."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image

from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.jobs import jobs
from video_reward_lora.training.methods.reward_backprop import RewardBackprop
from video_reward_lora.training.config import TrainConfig
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.jobs.jobs import Job, create_job, find_job, job_exporting_to, open_job, reuse
from video_reward_lora.reward.plot import save_frames
from video_reward_lora.training.jobs.runner import run_job


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cogvideox": write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"),
            "rewards": write_reward_models(root / "reward_models", ("aesthetic_v2.5",))}


def tiny_config(models: dict[str, Path], **overrides) -> TrainConfig:
    settings = dict(family="cogvideox", model={"folder": str(models["cogvideox"])}, rewards=[{"key": "aesthetic_v2.5"}],
                    reward_roots=[str(models["rewards"])], prompts=["a red ball", "a blue sky"], height=32, width=32,
                    frames=9, steps=4, rank=4, alpha=4.0, learning_rate=1e-2, max_steps=6, checkpoint_every=3,
                    sample_every=3, gradient_checkpointing=False)
    return TrainConfig.from_dict({**settings, **overrides})


def plain_config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({"family": "cogvideox", "model": {"folder": "x"}, "prompts": ["a"], **overrides})


def everything(folder: Path) -> list[str]:
    """Every file under `folder`, and every hidden entry (a temporary file or folder), relative."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.name.startswith("."))


def full_disk(monkeypatch, owner, name: str, target: int, after: int = 0) -> None:
    """Make `owner.name`, a function that writes the file given as its argument number `target`, behave as on a
    full disk from its call number `after` on: it writes part of the file, then raises ENOSPC."""
    real, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) <= after:
            return real(*args, **kwargs)
        Path(args[target]).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(owner, name, failing)


def test_find_job_takes_only_plain_folder_names(tmp_path):
    job = create_job(tmp_path / "jobs", plain_config())
    (tmp_path / "jobs" / ".." / "config.json").write_text("{}")  # a config.json one level up, as bait
    (tmp_path / "jobs" / "config.json").write_text("{}")
    assert find_job(tmp_path / "jobs", job.id).path == job.path
    for bad in ("..", ".", "", "../jobs/" + job.id, job.id + "/", str(job.path), f".{job.id}"):
        with pytest.raises(FileNotFoundError, match="there is no training job"):
            find_job(tmp_path / "jobs", bad)


def test_job_creation_is_all_or_nothing(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        full_disk(patch, Path, "write_text", 0, after=1)  # config.json is written, then the disk is full
        with pytest.raises(OSError, match="No space left on device") as raised:
            create_job(tmp_path / "jobs", plain_config())
    assert raised.value.errno == errno.ENOSPC
    assert list((tmp_path / "jobs").iterdir()) == []  # no job folder, no .tmp file or folder
    job = create_job(tmp_path / "jobs", plain_config())
    assert everything(tmp_path / "jobs") == [f"{job.id}/config.json", f"{job.id}/job.json", f"{job.id}/status.json"]
    assert job.status()["state"] == "failed" and job.status()["resumable"]  # created, but no process was ever started
    assert "never started" in job.status()["reason"]


def test_a_job_with_no_status_and_no_process_reads_as_failed(tmp_path):
    job = create_job(tmp_path, plain_config())
    (job.path / "status.json").unlink()  # as a job folder left by an older version on a full disk
    status = job.status()
    assert status["state"] == "failed" and status["resumable"] and "resume continues from the start" in status["reason"]
    job.set_status("queued", "waiting for the GPU", pid=os.getpid())  # a live process behind it: queued it is
    assert job.status()["state"] == "queued"


def test_every_write_leaves_nothing_behind_on_a_full_disk(models, tmp_path, monkeypatch):
    """Status, metrics, checkpoints, samples and the exported LoRA: a write that meets a full disk raises, leaves no
    temporary file or folder, and leaves the earlier file as it was."""
    job = create_job(tmp_path / "jobs", tiny_config(models), export_to=tmp_path / "loras" / "mine.safetensors")
    job.set_status("running", "step 1/6", step=1)
    job.append_metrics({"step": 1, "loss": 0.5})
    trainer = RewardBackprop.from_config(job.config(), torch.float32, torch.device("cpu"))
    checkpoint = job.checkpoints / "step-000000"
    trainer.save(checkpoint)
    saved = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    shutil.copyfile(checkpoint / "lora.safetensors", job.lora)
    before = everything(tmp_path)

    def refused(owner, name: str, target: int, write, after: int = 0) -> None:
        with monkeypatch.context() as patch:
            full_disk(patch, owner, name, target, after)
            with pytest.raises(OSError, match="No space left on device"):
                write()
        assert everything(tmp_path) == before, write

    refused(Path, "write_text", 0, lambda: job.set_status("running", "step 2/6", step=2))
    assert job.status()["reason"] == "step 1/6"
    refused(Path, "write_text", 0, lambda: job.truncate_metrics(0))
    refused(safetensors.torch, "save_file", 1, lambda: trainer.save(checkpoint), after=1)  # the LoRA fits, the state not
    refused(safetensors.torch, "save_file", 1, lambda: trainer.save(job.checkpoints / "step-000001"))
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == saved and job.latest_checkpoint() == checkpoint
    refused(Image.Image, "save", 1, lambda: save_frames(torch.rand(2, 3, 8, 8), job.samples / "latest.png"))
    refused(shutil, "copyfile", 1, lambda: jobs.export_lora(job))

    with monkeypatch.context() as patch:  # metrics: a line the disk cut part-way is cut off again
        patch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        with pytest.raises(OSError):
            job.append_metrics({"step": 2, "loss": 0.25})
    job.append_metrics({"step": 2, "loss": 0.125})
    assert job.metrics() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.125}]


def test_a_changed_config_resumes_replaces_or_is_refused(tmp_path):
    root, export = tmp_path / "jobs", tmp_path / "loras" / "mine.safetensors"
    config = plain_config(max_steps=100, learning_rate=1e-4)
    job, action = open_job(root, config, export, "mine")
    assert action == "new" and job_exporting_to(root, export) == job
    job.set_status("running", "step 5/100", pid=os.getpid())
    assert open_job(root, config, export) == (job, "keep")
    with pytest.raises(FileExistsError, match=f"job {job.id}, which makes this LoRA, is running with other settings "
                                              r"\(learning_rate\); choose another LoRA name, or cancel it first"):
        open_job(root, plain_config(max_steps=100, learning_rate=1e-5), export)

    job.set_status("failed", "loss became nan at step 7")
    assert reuse(job, config) == "resume"
    longer = plain_config(max_steps=300, learning_rate=1e-4, checkpoint_every=10, sample_every=5, validation_every=7,
                          validation_prompts=["a dog"])
    assert open_job(root, longer, export) == (job, "resume")  # the checkpoints stay valid: same trajectory
    assert job.config() == longer

    fixed = plain_config(max_steps=300, learning_rate=1e-5)
    new, action = open_job(root, fixed, export, "mine")
    assert action == "replace" and new != job and new.config() == fixed
    assert job_exporting_to(root, export) == new and job.info()["export_to"] is None and job.info()["replaced_by"] == new.id
    assert job.path.is_dir() and job.config() == longer  # the old job stays, with its checkpoints, under its own id

    new.set_status("finished", "trained 300 steps")
    assert open_job(root, fixed, export) == (new, "keep")
    with pytest.raises(FileExistsError, match="is finished with other settings \\(seed\\).*delete its folder"):
        open_job(root, plain_config(max_steps=300, learning_rate=1e-5, seed=7), export)
    old = plain_config(max_steps=5)
    bad, _ = open_job(root, old, tmp_path / "loras" / "bad.safetensors", "bad")
    bad.path.joinpath("config.json").write_text(json.dumps({**json.loads(old.to_json()), "frames": 50}))  # refused now
    bad.set_status("failed", "CogVideoX-Fun: frames must be 4k+1 (e.g. 49), got 50")
    fresh, action = open_job(root, old, tmp_path / "loras" / "bad.safetensors", "bad")  # the fixed setting
    assert action == "replace" and fresh.config() == old and bad.info()["replaced_by"] == fresh.id

    other = tmp_path / "loras" / "other.safetensors"
    other.parent.mkdir(parents=True)
    other.write_text("not from a job")
    with pytest.raises(FileExistsError, match="exists already and no job made it"):
        open_job(root, fixed, other, "other")


def test_resuming_with_new_validation_prompts_and_steps_repeats_the_run(models, tmp_path, monkeypatch):
    """A cancelled job resumed with other resumable settings (more steps, validation, and the memory options a job
    that ran out of memory would turn on) trains exactly as the run that was never stopped."""
    straight = create_job(tmp_path / "a", tiny_config(models, validation_prompts=["a sunny field"], validation_every=2))
    assert run_job(straight.path) == "finished"
    export = tmp_path / "loras" / "b.safetensors"
    stopped, _ = open_job(tmp_path / "b", tiny_config(models, max_steps=4, checkpoint_every=100), export, "b")
    with monkeypatch.context() as patch:
        patch.setattr(Job, "cancel_requested", lambda self: len(self.metrics()) >= 3)
        assert run_job(stopped.path) == "cancelled"
    assert stopped.latest_checkpoint_step() == 3
    resumed, action = open_job(tmp_path / "b", tiny_config(models, validation_prompts=["a sunny field"], validation_every=2,
                                                           block_swap=1, activation_offload=True), export)
    assert (resumed, action) == (stopped, "resume")
    assert run_job(resumed.path) == "finished"
    losses = lambda job: [(m["step"], m["loss"]) for m in job.metrics() if "loss" in m]  # noqa: E731
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 6


def test_divergence_before_any_checkpoint_says_so(models, tmp_path, monkeypatch):
    job = create_job(tmp_path, tiny_config(models, max_steps=2))
    monkeypatch.setattr(RewardBackprop, "_rewards", lambda self, frames, prompts, seed: frames.mean() * float("nan") * torch.ones(len(prompts)))
    assert run_job(job.path) == "failed"
    reason = job.status()["reason"]
    assert "loss became nan at step 1" in reason and "no checkpoint was saved yet" in reason and "step 0" not in reason


def test_the_foreground_cli_writes_log_txt(tmp_path, capsys):
    from video_reward_lora.training.cli import main

    config = plain_config(model={"folder": str(tmp_path / "missing-model")}, device="cpu")
    (tmp_path / "train.json").write_text(config.to_json())
    output = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "train.json"), "--output", str(output)]) == 1
    shown = capsys.readouterr()
    logged = (output / "log.txt").read_text()
    assert "details in log.txt" in shown.out and "Traceback" in shown.err  # the terminal still shows everything
    assert "Traceback" in logged and "job failed:" in logged and "HPS_v2.1_compressed.pt" in logged
    assert json.loads((output / "status.json").read_text())["state"] == "failed"


def test_the_foreground_cli_resumes_a_cancelled_job(models, tmp_path):
    """A cancel request left in the folder does not stop the next foreground run of that job (it used to cancel it
    again at once)."""
    from video_reward_lora.training.cli import main

    (tmp_path / "train.json").write_text(tiny_config(models, max_steps=2, device="cpu").to_json())
    output = tmp_path / "run"
    output.mkdir()
    Job(output).request_cancel()
    assert main(["run", "--config", str(tmp_path / "train.json"), "--output", str(output)]) == 0
    assert Job(output).status()["state"] == "finished" and not Job(output).cancel_requested()
