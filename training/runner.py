"""Running a job directory to its end: queue for the GPU, load, train with checkpoints and samples, export the LoRA,
and leave a status that says how it ended (finished, cancelled, failed with the reason)."""
from __future__ import annotations

import os
import shutil
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .backprop import RewardBackprop, TrainingDiverged
from .build import load_family, load_objective, resolve_device, resolve_dtype
from .config import TrainConfig, read_prompts
from .jobs import Job, export_lora
from . import zero
from .sharding import full, held_fraction, wants_fsdp

KEEP_CHECKPOINTS = 3
LOCK_FILE = ".gpu.lock"
OUT_OF_MEMORY_HINT = ("lower the size, frames or rank, keep gradient checkpointing on, decode fewer latents, or train "
                      "fewer steps with gradients")


def save_image(frames: torch.Tensor, path: Path) -> None:
    """Frames `[N,3,H,W]` in 0..1 side by side as one PNG, written atomically."""
    row = torch.cat(list(frames.clamp(0, 1)), dim=-1)
    pixels = (row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    temporary = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(pixels).save(temporary)
    os.replace(temporary, path)


def _wait_for_gpu(job: Job, main: bool):
    """The lock that lets one job use the GPU at a time; None when the job was cancelled while queued."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(job.path.parent / LOCK_FILE))
    while True:
        try:
            lock.acquire(timeout=1.0)
            return lock
        except Timeout:
            if job.cancel_requested():
                return None
            if main:
                job.set_status("queued", "waiting for the GPU (another training job is running)")


def run_job(path: Path) -> str:
    """Run (or resume) the job in `path`; returns its final state."""
    job = Job(Path(path))
    config = job.config()
    accelerator = zero.make_accelerator(cpu=resolve_device(config.device).type == "cpu")
    try:
        state = _run(job, config, accelerator)
        if state != "failed":  # a failed rank may never reach the barrier
            accelerator.wait_for_everyone()
        return state
    finally:  # a process group left open can abort the interpreter's exit under accelerate launch
        accelerator.end_training()


def _run(job: Job, config: TrainConfig, accelerator) -> str:
    main = accelerator.is_main_process
    single = accelerator.num_processes == 1
    lock = _wait_for_gpu(job, main) if single else nullcontext()
    if lock is None:
        job.set_status("cancelled", "cancelled while queued", step=job.latest_checkpoint_step())
        return "cancelled"
    step = job.latest_checkpoint_step()
    try:
        with lock:
            return _train(job, config, accelerator)
    except TrainingDiverged as err:
        reason = f"{err}; the last good checkpoint is step {job.latest_checkpoint_step()} (try a lower learning rate)"
    except torch.OutOfMemoryError as err:
        reason = f"out of memory at step {job.status().get('step', step) + 1}: {OUT_OF_MEMORY_HINT} ({str(err).splitlines()[0]})"
    except Exception as err:  # noqa: BLE001 - any failure must end in a readable status, never a silent hang
        traceback.print_exc()
        reason = f"{type(err).__name__}: {err} (details in log.txt)"
    if main:
        job.set_status("failed", reason, resumable=job.latest_checkpoint() is not None)
    print(f"job failed: {reason}", flush=True)
    return "failed"


def _cancelled(job: Job, accelerator) -> bool:
    flag = torch.tensor([float(job.cancel_requested())], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0) if accelerator.num_processes > 1 else bool(flag.item())


def _train(job: Job, config: TrainConfig, accelerator) -> str:
    from tqdm.auto import tqdm

    main = accelerator.is_main_process
    device = accelerator.device
    dtype = resolve_dtype(config.precision, device)
    if main:
        job.set_status("running", "loading the models", step=job.latest_checkpoint_step(), max_steps=config.max_steps)
    family = load_family(config, dtype, device, sharded=wants_fsdp(config.fsdp, accelerator))
    objective = load_objective(config, dtype, device)
    prompts = config.prompts or read_prompts(Path(config.prompts_file))
    family.encode(list(dict.fromkeys([*prompts, *config.validation_prompts, config.negative_prompt])))
    family.release_text_encoders()
    trainer = RewardBackprop(config, family, objective, accelerator)
    if main and (trainer.sharded or trainer.engine is not None):
        scheme = "FSDP" if trainer.sharded else f"DeepSpeed ZeRO-{trainer.engine.zero_optimization_stage()}"
        print(f"{scheme} over {accelerator.num_processes} processes: this one holds {held_fraction(trainer.transformer):.1%} "
              f"of the {trainer.expert} transformer's weights", flush=True)
    latest = job.latest_checkpoint()
    if latest is not None:
        trainer.load(latest)
        if main:
            job.truncate_metrics(trainer.step)
            print(f"resumed from {latest.name}", flush=True)
    if trainer.step == 0 and config.validation_prompts:  # every process samples: sharded weights need them all
        val_reward = trainer.evaluate(config.validation_prompts)
        if main:
            job.append_metrics({"step": 0, "val_reward": val_reward})
    bar = tqdm(total=config.max_steps, initial=trainer.step, desc=f"training {job.id}", disable=not main)
    while trainer.step < config.max_steps:
        if _cancelled(job, accelerator):
            _checkpoint(job, trainer)
            if main:
                job.set_status("cancelled", f"cancelled at step {trainer.step}; checkpoint saved (resume continues from it)",
                               step=trainer.step, resumable=True)
            return "cancelled"
        record = trainer.train_step()
        last = trainer.step == config.max_steps
        if config.validation_prompts and (trainer.step % config.validation_every == 0 or last):
            record["val_reward"] = trainer.evaluate(config.validation_prompts)
        if main:
            job.append_metrics(record)
        if trainer.step % config.checkpoint_every == 0 or last:
            _checkpoint(job, trainer)
        if main:
            if trainer.step % config.sample_every == 0 or last or trainer.step == 1:
                job.samples.mkdir(exist_ok=True)
                save_image(trainer.last_frames, job.samples / "latest.png")
                shutil.copyfile(job.samples / "latest.png", job.samples / f"step-{trainer.step:06d}.png")
            job.set_status("running", f"step {trainer.step}/{config.max_steps}", step=trainer.step,
                           loss=record["loss"], reward=record["reward"])
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4g}", reward=f"{record['reward']:.4g}")
    bar.close()
    checksums = _rank_checksums(trainer, accelerator)
    trainer.write_lora(job.lora)
    if main:
        exported = export_lora(job)
        job.set_status("finished", f"trained {trainer.step} steps", step=trainer.step, lora=str(exported or job.lora),
                       rank_checksums=checksums)
    return "finished"


def _rank_checksums(trainer: RewardBackprop, accelerator) -> list[float]:
    """A checksum of the LoRA on every process: equal values show the data-parallel updates stayed in sync."""
    with trainer.whole_params():
        total = torch.stack([full(p.detach()).double().sum() for p in trainer.params.values()]).sum().reshape(1)
    return accelerator.gather(total.to(accelerator.device)).tolist()


def _checkpoint(job: Job, trainer: RewardBackprop) -> None:
    """Called by every process (sharded state is gathered); the main one writes and prunes."""
    trainer.save(job.checkpoints / f"step-{trainer.step:06d}")
    for old in job.checkpoint_dirs()[:-KEEP_CHECKPOINTS] if trainer.main else ():
        shutil.rmtree(old, ignore_errors=True)
