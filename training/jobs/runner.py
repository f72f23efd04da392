"""Running a job directory to its end: queue for the GPU, load, then train with checkpoints and samples and export the
LoRA (a training job) or make and pair videos (a preference-pair job, `preference.builder`), and leave a status that
says how it ended (finished, cancelled, failed with the reason)."""
from __future__ import annotations

import json
import shutil
import socket
import time
import traceback
import uuid
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
import torch

from ...reward.files import atomic_path, write_json_atomic, write_text_atomic
from ...reward.plot import save_frames
from ..build import resolve_device, resolve_dtype
from ..config import TrainConfig
from ..curves import headline
from ..distributed import zero
from ..distributed.sharding import full, held_fraction
from ..engine.engine import EXTRA_FILE, Engine, TrainingDiverged
from ..engine.guards import JudgeWatch
from ..methods.dpo import DiffusionDPO
from ..methods.reward_backprop import RewardBackprop
from ..preference.builder import build_pairs
from ..preference.config import PairsConfig
from .jobs import Job, JobConfig, export_lora
from . import gpu_lock

KEEP_CHECKPOINTS = 3
BEST_FOLDER = "best"  # in the job folder, with a judge: the LoRA of the judge's best evaluation and best.json
METHODS: dict[str, type[RewardBackprop] | type[DiffusionDPO]] = {"reward_backprop": RewardBackprop, "dpo": DiffusionDPO}
OUT_OF_MEMORY_HINT = ("turn on block_swap or activation_offload (the job then resumes from its last checkpoint) or "
                      "fp8_base, lower the size, frames or rank, keep gradient checkpointing on, decode fewer latents, or "
                      "train fewer steps with gradients")


def _wait_for_gpu(job: Job, accelerator) -> AbstractContextManager | None:
    """This process's part of the machine-wide GPU lock (`gpu_lock`), held until the block it guards ends; None when the
    job was cancelled while queued. In a multi-process run the first process on each machine queues for that machine's
    lock and the others learn the outcome from a file in the job folder, which they poll: a collective call would time
    out behind a long queue. Then every process meets the others, and a cancellation on any machine cancels all."""
    def waiting(place: int, holder: str | None) -> None:
        behind = f"job {Path(holder).name}" if holder else "another job"
        job.set_status("queued", f"{gpu_lock.ordinal(place)} in line for the GPU behind {behind}")

    if accelerator.num_processes == 1:
        return gpu_lock.acquire(job.path, job.cancel_requested, waiting)
    from accelerate.utils import broadcast_object_list

    launch = broadcast_object_list([uuid.uuid4().hex])[0]  # a name for this launch, the same on every process
    outcome = job.path / f".gpu-{launch}-{socket.gethostname()}"
    lock: AbstractContextManager | None = nullcontext()
    if accelerator.is_local_main_process:
        lock = gpu_lock.acquire(job.path, job.cancel_requested, waiting if accelerator.is_main_process else None)
        write_text_atomic(outcome, "cancelled" if lock is None else "held")
    else:
        while not outcome.is_file():
            time.sleep(0.5)
        if outcome.read_text() == "cancelled":
            lock = None
    cancelled = accelerator.reduce(torch.tensor([float(lock is None)], device=accelerator.device), "sum").item() > 0
    if accelerator.is_local_main_process:
        outcome.unlink()
    if cancelled and isinstance(lock, gpu_lock.GpuLock):
        lock.release()
    return None if cancelled else lock


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


def _run(job: Job, config: JobConfig, accelerator) -> str:
    main = accelerator.is_main_process
    lock = _wait_for_gpu(job, accelerator)
    if lock is None:
        if main:
            job.set_status("cancelled", "cancelled while queued", step=job.latest_checkpoint_step())
        return "cancelled"
    step = job.latest_checkpoint_step()
    try:
        with lock:
            if isinstance(config, PairsConfig):
                return _build(job, config, accelerator)
            return _train(job, config, accelerator)
    except TrainingDiverged as err:
        step = job.latest_checkpoint_step()
        saved = f"the last good checkpoint is step {step}" if step else "no checkpoint was saved yet"
        reason = f"{err}; {saved} (try a lower learning rate)"
    except torch.OutOfMemoryError as err:
        reason = f"out of memory at step {job.status().get('step', step) + 1}: {OUT_OF_MEMORY_HINT} ({str(err).splitlines()[0]})"
    except Exception as err:  # noqa: BLE001 - any failure must end in a readable status, never a silent hang
        traceback.print_exc()
        reason = f"{type(err).__name__}: {err} (details in log.txt)"
    if main:
        job.set_status("failed", reason, resumable=isinstance(config, PairsConfig) or job.latest_checkpoint() is not None)
    print(f"job failed: {reason}", flush=True)
    return "failed"


def _build(job: Job, config: PairsConfig, accelerator) -> str:
    if accelerator.num_processes > 1:
        raise ValueError("a preference-pair job runs in one process; start it without accelerate launch")
    device = accelerator.device
    return build_pairs(job, config, resolve_dtype(config.precision, device), device, job.cancel_requested)


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
    trainer = METHODS[config.method].for_job(config, dtype, device, accelerator)
    if main and trainer.family.sampling_settings():  # Wan2.2's shift and boundary, for the status text
        job.set_status("running", "models loaded", **trainer.family.sampling_settings())
    if main and (trainer.sharded or trainer.deepspeed is not None):
        scheme = "FSDP" if trainer.sharded else f"DeepSpeed ZeRO-{trainer.deepspeed.zero_optimization_stage()}"
        print(f"{scheme} over {accelerator.num_processes} processes: this one holds {held_fraction(trainer.transformer):.1%} "
              f"of the {trainer.expert} transformer's weights", flush=True)
    watch = JudgeWatch(config.patience, config.judge_drop)
    latest = job.latest_checkpoint()
    if latest is not None:
        trainer.load(latest)
        if (latest / EXTRA_FILE).is_file():
            watch = JudgeWatch.from_state(json.loads((latest / EXTRA_FILE).read_text())["judge_watch"], config.patience,
                                         config.judge_drop)
        if main:
            job.truncate_metrics(trainer.step)
            print(f"resumed from {latest.name}", flush=True)
    if trainer.step == 0 and trainer.validating():  # every process evaluates: sharded weights need them all
        scores = {"step": 0, **trainer.validation(), **trainer.judged()}
        if main:
            job.append_metrics(scores)
        _judge(job, trainer, watch, scores)
    bar = tqdm(total=config.max_steps, initial=trainer.step, desc=f"training {job.id}", disable=not main)
    stop = ""
    while trainer.step < config.max_steps and not stop:
        if _cancelled(job, accelerator):
            _checkpoint(job, trainer, watch)
            if main:
                job.set_status("cancelled", f"cancelled at step {trainer.step}; checkpoint saved (resume continues from it)",
                               step=trainer.step, resumable=True, **_best(watch, trainer))
            return "cancelled"
        record = trainer.train_step()
        last = trainer.step == config.max_steps
        if trainer.validating() and (trainer.step % config.validation_every == 0 or last):
            record.update(trainer.validation())
            record.update(trainer.judged())
            stop = _judge(job, trainer, watch, record)
        shown = headline([record])[0]  # the method's headline metric, beside the loss
        if main:
            job.append_metrics(record)
        if trainer.step % config.checkpoint_every == 0 or last or stop:
            _checkpoint(job, trainer, watch)
        if main:
            if trainer.last_frames is not None and (trainer.step % config.sample_every == 0 or last or trainer.step == 1):
                save_frames(trainer.last_frames, job.samples / "latest.png")
                with atomic_path(job.samples / f"step-{trainer.step:06d}.png") as copy:
                    shutil.copyfile(job.samples / "latest.png", copy)
            job.set_status("running", f"step {trainer.step}/{config.max_steps}", step=trainer.step,
                           loss=record["loss"], **{shown: record[shown]}, **_best(watch, trainer))
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4g}", **{shown: f"{record[shown]:.4g}"})
    bar.close()
    checksums = _rank_checksums(trainer, accelerator)
    if trainer.judge is None:
        trainer.write_lora(job.lora)
    elif main:  # the job's result is the LoRA of the judge's best evaluation
        with atomic_path(job.lora) as copy:
            shutil.copyfile(job.path / BEST_FOLDER / "lora.safetensors", copy)
    if main:
        exported = export_lora(job)
        ended = f"stopped early at step {trainer.step}: {stop}" if stop else f"trained {trainer.step} steps"
        if trainer.judge is not None:
            ended += f"; the LoRA is step {watch.best_step}'s, the judge's best ({watch.best:.5g})"
        job.set_status("finished", ended, step=trainer.step, lora=str(exported or job.lora), rank_checksums=checksums,
                       **_best(watch, trainer))
        print(f"finished: {ended}", flush=True)
    return "finished"


def _best(watch: JudgeWatch, trainer: Engine) -> dict[str, Any]:
    """The judge's best so far, for the status (nothing without a judge)."""
    return {"best_step": watch.best_step, "best_judge": watch.best} if trainer.judge is not None and watch.best is not None else {}


def _judge(job: Job, trainer: Engine, watch: JudgeWatch, scores: dict[str, Any]) -> str:
    """Give the judge's score to the watch; keep the LoRA of a new best (in `best/`); returns why to stop, or ""."""
    if "judge" not in scores:
        return ""
    improved, stop = watch.update(trainer.step, scores["judge"])
    if improved:  # every process gathers the LoRA; the main one writes it
        trainer.write_lora(job.path / BEST_FOLDER / "lora.safetensors")
        if trainer.main:
            write_json_atomic(job.path / BEST_FOLDER / "best.json", {"step": watch.best_step, "judge": watch.best})
    return stop


def _rank_checksums(trainer: Engine, accelerator) -> list[float]:
    """A checksum of the LoRA on every process: equal values show the data-parallel updates stayed in sync."""
    with trainer.whole_params():
        total = torch.stack([full(p.detach()).double().sum() for p in trainer.params.values()]).sum().reshape(1)
    return accelerator.gather(total.to(accelerator.device)).tolist()


def _checkpoint(job: Job, trainer: Engine, watch: JudgeWatch) -> None:
    """Called by every process (sharded state is gathered); the main one writes and prunes."""
    trainer.save(job.checkpoints / f"step-{trainer.step:06d}", {"judge_watch": watch.state()})
    best = f"step-{watch.best_step:06d}" if trainer.judge is not None else None  # the judge's best checkpoint stays
    for old in job.checkpoint_dirs()[:-KEEP_CHECKPOINTS] if trainer.main else ():
        if old.name != best:
            shutil.rmtree(old, ignore_errors=True)
