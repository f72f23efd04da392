"""Reward-backprop training on tiny models: the reward rises on held-out prompts, the LoRA it exports reproduces
the trained model, resume repeats the uninterrupted run exactly, and every way a job can end leaves a clear status."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.distributed import zero
from video_reward_lora.training.jobs import gpu_lock, jobs
from video_reward_lora.training.methods.reward_backprop import RewardBackprop
from video_reward_lora.training.build import load_family
from video_reward_lora.training.config import TrainConfig, read_prompts
from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate
from video_reward_lora.training.families.tiny_wan import write_wan22
from video_reward_lora.training.jobs.jobs import Job, create_job
from video_reward_lora.training.lora.adapters import attached
from video_reward_lora.training.lora.formats import read_lora
from video_reward_lora.training.jobs.runner import run_job
from video_reward_lora.training.sampler import sample
from video_reward_lora.training.steps import grad_steps

PROMPTS = ["a red ball", "a blue sky", "a cat in a field", "a dog on the field"]
HELD_OUT = ["a red cat at dusk", "a sunny field", "a ball rolling"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "cogvideox": write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"),
        "easyanimate": write_easyanimate(root / "EasyAnimateV5-7b-zh-InP"),
        "wan2.2": write_wan22(root / "wan"),
        "rewards": write_reward_models(root / "reward_models", ("aesthetic_v2.5", "hps_v2.1")),
    }


def tiny_config(models: dict[str, Path], family: str = "cogvideox", **overrides) -> TrainConfig:
    settings = dict(
        family=family, model={k: str(v) for k, v in models[family].items()} if family == "wan2.2" else {"folder": str(models[family])}, rewards=[{"key": "aesthetic_v2.5"}],
        reward_roots=[str(models["rewards"])], prompts=PROMPTS, validation_prompts=HELD_OUT, validation_every=1000,
        height=32, width=32, frames=9, steps=4, rank=4, alpha=4.0, learning_rate=1e-2, max_steps=6,
        checkpoint_every=3, sample_every=3, gradient_checkpointing=False,
    )
    return TrainConfig.from_dict({**settings, **overrides})


def test_step_strategies():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert grad_steps("last", 50) == [49]
    assert grad_steps("tail", 50, 5) == [45, 46, 47, 48, 49]
    uniform = grad_steps("uniform", 50, 5, g())
    assert len(uniform) == 5 and {b - a for a, b in zip(uniform, uniform[1:])} == {10} and 0 <= uniform[0] < 10
    random = grad_steps("random", 50, 3, g(), random_start=10, random_end=20)
    assert len(set(random)) == 3 and all(10 <= s < 20 for s in random)
    assert grad_steps("list", 50, step_list=[3, 1, 3]) == [1, 3]
    cutoff = grad_steps("cutoff", 50, generator=g())
    assert cutoff == list(range(cutoff[0], 50))
    for bad, match in ((dict(strategy="list", step_list=[50]), "outside"), (dict(strategy="random", random_start=60), "empty"),
                       (dict(strategy="nope"), "unknown strategy")):
        with pytest.raises(ValueError, match=match):
            grad_steps(steps=50, **bad)


def test_config_and_prompt_errors(models, tmp_path):
    with pytest.raises(ValueError, match="unknown training settings: lr"):
        TrainConfig.from_dict({"family": "cogvideox", "model": {"folder": "x"}, "lr": 1})
    with pytest.raises(ValueError, match="unknown family"):
        TrainConfig.from_dict({"family": "sd15", "model": {}, "prompts": ["a"]})
    with pytest.raises(ValueError, match="missing: low, vae"):
        TrainConfig.from_dict({"family": "wan2.2", "model": {"high": "h", "text_encoder": "t"}, "prompts": ["a"]})
    with pytest.raises(ValueError, match="VAE gradient checkpointing"):
        tiny_config(models, "easyanimate", vae_gradient_checkpointing=True)
    with pytest.raises(ValueError, match="strategy 'best'"):
        tiny_config(models, strategy="best")
    with pytest.raises(ValueError, match="8-bit AdamW optimizer does not work on FSDP"):
        tiny_config(models, fsdp=True, optimizer="adamw8bit")
    with pytest.raises(RuntimeError, match="under accelerate launch with 2 or more processes"):
        _trainer(tiny_config(models, fsdp=True))
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n')
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\n{"text": "a dog"}\n')
    assert read_prompts(tmp_path / "p.txt") == read_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "none.txt")


def _trainer(config: TrainConfig) -> RewardBackprop:
    return RewardBackprop.from_config(config, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("family", ["cogvideox", "easyanimate", "wan2.2"])
def test_training_raises_the_held_out_reward_and_the_lora_reproduces_it(models, tmp_path, family):
    config = tiny_config(models, family, max_steps=30, checkpoint_every=30, sample_every=30)
    seed_noise = statistics.stdev(_trainer(tiny_config(models, family, seed=s)).evaluate(HELD_OUT) for s in range(4))
    job = create_job(tmp_path, config)
    assert run_job(job.path) == "finished"
    metrics = job.metrics()
    before, after = metrics[0]["val_reward"], metrics[-1]["val_reward"]
    assert after - before > 5 * seed_noise, (before, after, seed_noise)
    assert [m["step"] for m in metrics] == list(range(31)) and all(m["grad_steps"] == [3] for m in metrics[1:])
    assert (job.samples / "latest.png").is_file() and job.status()["state"] == "finished"
    assert job.status().get("shift") == (5.0 if family == "wan2.2" else None)  # the Fun InP experts' own shift

    # the exported LoRA, loaded the way the LoRA nodes load it, reproduces the model as trained
    trained = _trainer(config)
    trained.load(job.latest_checkpoint())
    lora = read_lora(job.lora)
    assert lora.source_format == "videox" and lora.family == trained.family.lora_family
    generator = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    with torch.no_grad():
        expected = sample(trained.family, [HELD_OUT[0]], frames=9, height=32, width=32, steps=4, generator=generator())
        fresh = load_family(config, torch.float32, torch.device("cpu"))
        with attached(fresh.transformer, fresh.lora_family, [(lora, 1.0)]):
            reloaded = sample(fresh, [HELD_OUT[0]], frames=9, height=32, width=32, steps=4, generator=generator())
        base = sample(fresh, [HELD_OUT[0]], frames=9, height=32, width=32, steps=4, generator=generator())
    assert torch.allclose(reloaded, expected, atol=1e-5)
    assert (base - expected).abs().max() > 100 * (reloaded - expected).abs().max()


def test_cancel_then_resume_repeats_the_uninterrupted_run(models, tmp_path, monkeypatch):
    config = tiny_config(models, max_steps=6, checkpoint_every=100)
    straight = create_job(tmp_path / "a", config)
    assert run_job(straight.path) == "finished"

    interrupted = create_job(tmp_path / "b", config)
    with monkeypatch.context() as patch:
        patch.setattr(Job, "cancel_requested", lambda self: len(self.metrics()) >= 4)  # step 0 validation + 3 steps
        assert run_job(interrupted.path) == "cancelled"
    status = interrupted.status()
    assert status["state"] == "cancelled" and status["step"] == 3 and "checkpoint saved" in status["reason"]
    assert interrupted.latest_checkpoint().name == "step-000003"
    assert read_lora(interrupted.latest_checkpoint() / "lora.safetensors").modules  # a loadable LoRA
    assert run_job(interrupted.path) == "finished"
    losses = lambda job: [(m["step"], m.get("loss"), m.get("val_reward")) for m in job.metrics()]  # noqa: E731
    assert losses(interrupted) == losses(straight)


def test_any_comfyui_seed_trains(models):
    """Seeds up to 2^64-1 (ComfyUI's range) train: the LoRA initialisation, every step's draws (random frames too)
    and the held-out evaluation; 181_011_380 is the first seed the former step-seed formula overflowed at."""
    trainer = _trainer(tiny_config(models, validation_prompts=[], frame_mode="random", frame_count=1, seed=2**64 - 1))
    for seed in (0, 181_011_380, 2**63, 2**64 - 1):
        trainer.config = dataclasses.replace(trainer.config, seed=seed)
        record = trainer.train_step()
        assert math.isfinite(record["loss"]) and record["grad_steps"] == [3]
        assert math.isfinite(trainer.evaluate(HELD_OUT[:1]))


def test_nan_and_out_of_memory_end_in_a_clear_status(models, tmp_path, monkeypatch):
    config = tiny_config(models, validation_prompts=[])
    nan_job = create_job(tmp_path, config, name="nan")
    monkeypatch.setattr(RewardBackprop, "_rewards", lambda self, frames, prompts, seed: frames.mean() * float("nan") * torch.ones(len(prompts)))
    assert run_job(nan_job.path) == "failed"
    assert "loss became nan at step 1" in nan_job.status()["reason"]

    def out_of_memory(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    oom_job = create_job(tmp_path, config, name="oom")
    monkeypatch.setattr(RewardBackprop, "decoded_frames", out_of_memory)
    assert run_job(oom_job.path) == "failed"
    status = oom_job.status()
    assert status["reason"].startswith("out of memory at step 1") and "gradient checkpointing" in status["reason"]


def _wait(job: Job, condition, timeout: float = 90.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job.status()
        if condition(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"timed out; status {job.status()}; log:\n{job.log.read_text()[-3000:]}")


def test_background_job_queue_kill_and_resume(models, tmp_path):
    from filelock import FileLock

    first = create_job(tmp_path, tiny_config(models, max_steps=400, checkpoint_every=2, validation_prompts=[]))
    second = create_job(tmp_path, tiny_config(models, max_steps=2, validation_prompts=[]))
    with FileLock(str(gpu_lock.lock_dir() / gpu_lock.LOCK_NAME)):  # another job holds the GPU (and names none)
        jobs.start(second)
        assert _wait(second, lambda s: s["reason"] == "1st in line for the GPU behind another job")["state"] == "queued"
        second.request_cancel()
        assert _wait(second, lambda s: s["state"] != "queued")["reason"] == "cancelled while queued"

    process = jobs.start(first)
    _wait(first, lambda s: s.get("step", 0) >= 3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    status = first.status()
    assert status["state"] == "failed" and status["resumable"] and "killed or crashed" in status["reason"]
    resumed_from = first.latest_checkpoint_step()
    assert resumed_from >= 2
    first.path.joinpath("config.json").write_text(json.dumps({**json.loads(first.path.joinpath("config.json").read_text()), "max_steps": resumed_from + 2}))
    jobs.start(first).wait(timeout=90)
    assert first.status()["state"] == "finished", first.log.read_text()[-2000:]
    assert [m["step"] for m in first.metrics()] == list(range(1, resumed_from + 3))


def _launch(config: TrainConfig, output: Path, deepspeed: dict | None = None) -> tuple[dict, str]:
    """Run `config` under accelerate launch with 2 CPU processes into `output` (with a DeepSpeed config: those
    accelerate launch settings); returns the job's status and output."""
    path = output.with_suffix(".json")
    path.write_text(config.to_json())
    accelerate = Path(sys.executable).with_name("accelerate")
    if deepspeed is None:
        how = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        launch_config = output.with_suffix(".yaml")
        launch_config.write_text(json.dumps({"distributed_type": "DEEPSPEED", "num_processes": 2, "num_machines": 1,
                                             "deepspeed_config": deepspeed}))
        how = ["--config_file", str(launch_config)]
    result = subprocess.run(
        [str(accelerate), "launch", *how, "-m", "video_reward_lora.training.cli", "run", "--config", str(path), "--output",
         str(output)], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return Job(output).status(), result.stdout


def test_accelerate_two_processes_keep_one_lora(models, tmp_path):
    status, _ = _launch(tiny_config(models, max_steps=3, validation_prompts=[]), tmp_path / "run")
    assert status["state"] == "finished"
    checksums = status["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1] != 0
    sharded, output = _launch(tiny_config(models, max_steps=3, validation_prompts=[], fsdp=True), tmp_path / "fsdp")
    assert "FSDP over 2 processes" in output  # CogVideoX-Fun's blocks shard too, to the same LoRA
    assert sharded["rank_checksums"] == pytest.approx(checksums, rel=1e-4)
    if importlib.util.find_spec("deepspeed") is not None:  # CogVideoX-Fun's transformer as a ZeRO-3 engine
        partitioned, output = _launch(tiny_config(models, max_steps=3, validation_prompts=[]), tmp_path / "zero", {"zero_stage": 3})
        assert "DeepSpeed ZeRO-3 over 2 processes" in output
        assert partitioned["rank_checksums"] == pytest.approx(checksums, rel=1e-4)


WAN_SETTINGS = dict(max_steps=3, checkpoint_every=1, validation_prompts=[], gradient_checkpointing=True)


@pytest.fixture(scope="module")
def wan_ddp(models, tmp_path_factory) -> Job:
    """Tiny Wan2.2 trained 3 steps by plain data parallelism on 2 processes: what the sharded runs must match."""
    output = tmp_path_factory.mktemp("wan_ddp") / "ddp"
    _launch(tiny_config(models, "wan2.2", **WAN_SETTINGS), output)
    return Job(output)


def _stop_at_two_and_resume(models, output: Path, deepspeed: dict | None = None, **overrides) -> tuple[Job, str]:
    """Train tiny Wan2.2 with WAN_SETTINGS on 2 processes into `output`, stopping after step 2, then resume it to step
    3; returns the job and the resumed launch's output."""
    _launch(tiny_config(models, "wan2.2", **{**WAN_SETTINGS, **overrides, "max_steps": 2}), output, deepspeed)
    resumed = Job(output)
    resumed.path.joinpath("config.json").write_text(tiny_config(models, "wan2.2", **WAN_SETTINGS, **overrides).to_json())
    status, printed = _launch(resumed.config(), output, deepspeed)
    assert status["state"] == "finished" and "resumed from step-000002" in printed, printed[-3000:]
    return resumed, printed


def _assert_trains_like(ddp: Job, run: Job, lora_bound: float) -> None:
    """`run` ends with `ddp`'s LoRA (within `lora_bound` of its change), with equal losses and gradient norms: equal
    norms show the gradients are averaged as DDP averages them."""
    reference, trained = read_lora(ddp.lora), read_lora(run.lora)
    assert trained.modules.keys() == reference.modules.keys() and len(reference.modules) > 0
    moved = max(float(m.up.abs().max()) for m in reference.modules.values())
    assert moved > 1e-3  # three steps at lr 1e-2 moved the LoRA (B starts at zero)
    difference = max(float((a.up - reference.modules[k].up).abs().max()) for k, a in trained.modules.items())
    assert difference < lora_bound * moved, (difference, moved)
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in run.metrics()] == pytest.approx([m[key] for m in ddp.metrics()], rel=1e-5)


def test_fsdp_trains_what_data_parallel_trains_and_resumes(models, tmp_path, wan_ddp):
    """Two processes with sharded weights (Wan2.2, both experts sharded, gradient checkpointing on) end with the LoRA
    plain data parallelism trains, also when the sharded run stops at step 2 and resumes from its checkpoint."""
    resumed, output = _stop_at_two_and_resume(models, tmp_path / "fsdp", fsdp=True)
    held = re.search(r"FSDP over 2 processes: this one holds ([\d.]+)% of the low transformer's weights", output)
    assert held and 45 < float(held.group(1)) < 55, output[-2000:]
    _assert_trains_like(wan_ddp, resumed, 1e-3)  # only the order of the float sums differs (measured: 2e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_what_data_parallel_trains_and_resumes(models, tmp_path, stage, wan_ddp):
    """Under a DeepSpeed launch config the trained Wan2.2 expert becomes a ZeRO engine (stage 3 partitions its weights
    too, here with the seeds' CPU offload of weights and optimizer); two processes end with the LoRA plain data
    parallelism trains, also across a stop and resume. Stage 2 comes from a DeepSpeed JSON with "auto" entries."""
    pytest.importorskip("deepspeed")
    if stage == 2:
        auto = dict.fromkeys(["train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                              "gradient_clipping"], "auto")
        (tmp_path / "ds.json").write_text(json.dumps({**auto, "bf16": {"enabled": "auto"}, "zero_optimization": {
            "stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 5e8}}))
        zero_config = {"deepspeed_config_file": str(tmp_path / "ds.json"), "zero3_init_flag": False}
    else:
        zero_config = {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"}
    resumed, output = _stop_at_two_and_resume(models, tmp_path / "zero", zero_config)
    held = re.search(rf"DeepSpeed ZeRO-{stage} over 2 processes: this one holds ([\d.]+)% of the low transformer", output)
    assert held and (45 < float(held.group(1)) < 55 if stage == 3 else float(held.group(1)) == 100), output[-2000:]
    # the reduction order differs, and AdamW's eps of 1e-10 magnifies it on near-zero gradients (measured 2.6e-4 and
    # 8.1e-4 of the change for stages 2 and 3; a straight 3-step stage-3 run ends on the resumed run's LoRA exactly)
    _assert_trains_like(wan_ddp, resumed, 3e-3)


def test_deepspeed_config_follows_the_training_config():
    """The training config's batch, accumulation, clipping and precision win over the launch config's, each change
    said; what cannot work together is refused."""
    def accelerator(settings: dict) -> SimpleNamespace:
        return SimpleNamespace(num_processes=4, state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=settings)))

    config = TrainConfig.from_dict(dict(family="cogvideox", model={"folder": "x"}, prompts=["a"], batch_size=2, accumulation=3))
    settings = {"gradient_accumulation_steps": 1, "gradient_clipping": "auto", "bf16": {"enabled": True},
                "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    notes = zero.configure(accelerator(settings), config)
    assert settings["train_micro_batch_size_per_gpu"] == 2 and settings["gradient_accumulation_steps"] == 3
    assert settings["train_batch_size"] == 24 and settings["gradient_clipping"] == config.max_grad_norm
    assert settings["bf16"] == {"enabled": False} and settings["zero_force_ds_cpu_optimizer"] is False
    assert len(notes) == 2 and "gradient_accumulation_steps 1 replaced by the training config's 3" in notes[0]
    assert "bf16 turned off" in notes[1]
    refused = ((dict(fsdp=True), {}, "choose one"), (dict(optimizer="adamw8bit"), {}, "use adamw with DeepSpeed"),
               ({}, {"optimizer": {"type": "AdamW"}}, 'remove the "optimizer" section'))
    for change, launch, message in refused:
        with pytest.raises(ValueError, match=message):
            zero.configure(accelerator(launch), dataclasses.replace(config, **change))


def test_wan_trains_one_expert_with_its_own_steps(models):
    high = _trainer(tiny_config(models, "wan2.2", expert="high", steps=10, strategy="tail", backprop_steps=2))
    assert high.chosen_steps(torch.Generator()) == [2, 3]  # 10 steps, shift 5, boundary 0.9: steps 0-3 are high
    assert any("attn2.to_k" in n for n in high.params) and not any("ffn" in n for n in high.params)  # Wan skips ffn
    assert not any("lora_" in n for n, _ in high.family.transformers["low"].named_parameters())
    low = _trainer(tiny_config(models, "wan2.2", expert="low", steps=10))
    assert low.chosen_steps(torch.Generator()) == [9] and low.transformer is low.family.transformers["low"]
    shifted = _trainer(tiny_config(models, "wan2.2", expert="high", steps=10, strategy="tail", backprop_steps=2, shift=12.0))
    assert shifted.chosen_steps(torch.Generator()) == [4, 5]  # shift 12: steps 0-5 are high (test_wan computes why)
    assert shifted.sampling_note() == ("Wan2.2 sampling: shift 12, boundary 0.9; of 10 steps, steps 0-5 on the high "
                                       "transformer, steps 6-9 on the low transformer")


def test_cli_reports_bad_configs(tmp_path, capsys):
    from video_reward_lora.training.cli import main

    (tmp_path / "bad.json").write_text('{"family": "cogvideox", "model": {"folder": "x"}, "lr": 1}')
    for config, message in (("nope.json", "config nope.json does not exist"), (tmp_path / "bad.json", "unknown training settings: lr")):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--config", str(config), "--output", str(tmp_path / "out")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
