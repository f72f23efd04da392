"""Nodes that start, watch and cancel reward-LoRA training jobs (each job runs in its own process)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..reward.files import resolve_inside
from ..reward.registry import REWARDS
from ..training.config import TrainConfig
from ..training.curves import training_curves
from ..training.jobs import ACTIVE, Job, create_job, find_job, job_exporting_to, start
from ..training.steps import STRATEGIES
from .folders import VIDEO_MODEL_FOLDERS, reward_model_roots, roots

CATEGORY = "video reward/training"
NONE = "none"
FAMILIES = {"CogVideoX-Fun": "cogvideox", "EasyAnimate": "easyanimate", "Wan2.2": "wan2.2"}
LORA_SUBFOLDER = "video_reward"
WAN_FILES = {"wan_high": ("diffusion_models", "high"), "wan_low": ("diffusion_models", "low"),
             "wan_vae": ("vae", "vae"), "wan_text_encoder": ("text_encoders", "text_encoder")}


def jobs_root() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory()) / "video_reward_jobs"


def _model_folders() -> list[str]:
    names = []
    for family, folder in VIDEO_MODEL_FOLDERS.items():
        for root in roots(folder):
            if root.is_dir():
                names += [f"{family}/{p.name}" for p in sorted(root.iterdir()) if p.is_dir()]
    return [NONE, *dict.fromkeys(names)]


def _files(folder: str) -> list[str]:
    import folder_paths

    return [NONE, *folder_paths.get_filename_list(folder)]


def _prompt_files() -> list[str]:
    import folder_paths

    root = Path(folder_paths.get_input_directory())
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".txt", ".jsonl"))
    return [NONE, *found]


def _model_files(family: str, model_folder: str, wan: dict[str, str]) -> dict[str, str]:
    """The config's model paths, resolved inside ComfyUI's model folders."""
    import folder_paths

    if family == "wan2.2":
        missing = [name for name, value in wan.items() if value == NONE]
        if missing:
            raise ValueError(f"Wan2.2 training needs {', '.join(missing)} (the two experts, the VAE and the UMT5 text encoder)")
        return {key: folder_paths.get_full_path_or_raise(folder, wan[name]) for name, (folder, key) in WAN_FILES.items()}
    label = next(k for k, v in FAMILIES.items() if v == family)
    prefix = f"{label}/"
    if not model_folder.startswith(prefix):
        raise ValueError(f"choose a {label} model folder (models/{VIDEO_MODEL_FOLDERS[label]}) for {label} training, not '{model_folder}'")
    folder = resolve_inside(roots(VIDEO_MODEL_FOLDERS[label]), model_folder.removeprefix(prefix))
    if folder is None:
        raise FileNotFoundError(f"{model_folder} is not in models/{VIDEO_MODEL_FOLDERS[label]}")
    return {"folder": str(folder)}


def _export_path(lora_name: str) -> Path:
    """Where the finished LoRA named `lora_name` goes: models/loras/video_reward/<name>.safetensors."""
    import folder_paths

    name = Path(lora_name.strip()).name.removesuffix(".safetensors")
    return Path(folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER / f"{name}.safetensors"


def _same_job(config: TrainConfig, export_to: Path) -> Job | None:
    """The job that trains the LoRA `export_to` (queueing the graph again finds it instead of starting another);
    an error when that job was started with other settings."""
    job = job_exporting_to(jobs_root(), export_to)
    if job is not None and job.config() != config:
        raise FileExistsError(f"a training job for loras/{LORA_SUBFOLDER}/{export_to.name} exists already ({job.id}) "
                              "with other settings; choose another lora_name")
    return job


def _watch(job: Job, node_id: str | None) -> None:
    """Push the job's progress to the browser (as text under the node) until it ends."""
    from server import PromptServer

    last = None
    while True:
        status = job.status()
        text = describe(job, status)
        if text != last and node_id is not None:
            PromptServer.instance.send_progress_text(text, node_id)
            PromptServer.instance.send_sync("video_reward.training", {"job": job.id, **status})
            last = text
        if status.get("state") not in ACTIVE:
            return
        time.sleep(2.0)


def describe(job: Job, status: dict) -> str:
    """One paragraph on where a job stands."""
    lines = [f"job {job.id}: {status.get('state')} ({status.get('reason', '')})"]
    if "max_steps" in status:
        lines.append(f"step {status.get('step', 0)}/{status['max_steps']}")
    metrics = job.metrics()
    steps = [m for m in metrics if "loss" in m]
    if steps:
        last = steps[-1]
        lines.append(f"loss {last['loss']:.5g}, reward {last['reward']:.5g}, grad norm {last['grad_norm']:.3g}, "
                     f"{last['time']:.2f} s/step, peak memory {last['memory_mib']:.0f} MiB")
    held_out = [m["val_reward"] for m in metrics if "val_reward" in m]
    if held_out:
        lines.append(f"held-out reward: {held_out[0]:.5g} at the start, {held_out[-1]:.5g} now")
    return "\n".join(lines)


class TrainRewardLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = TrainConfig(family="cogvideox", model={})
        rewards = list(REWARDS)
        return io.Schema(
            node_id="TrainRewardLoRA",
            display_name="Train Reward LoRA",
            category=CATEGORY,
            description="Starts a reward-backpropagation training job in its own process and returns its id at once. "
            "The finished LoRA appears in the loras list under video_reward/.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("family", options=list(FAMILIES), tooltip="The model family to train a LoRA for."),
                io.Combo.Input("model_folder", options=_model_folders(), tooltip="CogVideoX-Fun / EasyAnimate: the model folder (models/CogVideoX_Fun or models/EasyAnimate)."),
                io.Combo.Input("wan_high", options=_files("diffusion_models"), tooltip="Wan2.2: the high-noise expert (models/diffusion_models)."),
                io.Combo.Input("wan_low", options=_files("diffusion_models"), tooltip="Wan2.2: the low-noise expert (models/diffusion_models)."),
                io.Combo.Input("wan_vae", options=_files("vae"), tooltip="Wan2.2: the Wan 2.1 VAE (models/vae)."),
                io.Combo.Input("wan_text_encoder", options=_files("text_encoders"), tooltip="Wan2.2: the UMT5-XXL text encoder (models/text_encoders)."),
                io.Combo.Input("expert", options=["low", "high"], default=defaults.expert, tooltip="Wan2.2: which expert the LoRA trains; the other runs frozen."),
                io.Combo.Input("reward", options=rewards, default="hps_v2.1", tooltip="The reward to maximise (files in models/reward_models)."),
                io.Float.Input("reward_weight", default=1.0, min=0.0, max=100.0, step=0.05, tooltip="Weight of the first reward in a mix."),
                io.Combo.Input("reward_2", options=[NONE, *rewards], default=NONE, tooltip="Optional second reward; a mix uses normalised scores."),
                io.Float.Input("reward_2_weight", default=1.0, min=0.0, max=100.0, step=0.05, tooltip="Weight of the second reward."),
                io.String.Input("prompts", multiline=True, default="", tooltip="Training prompts, one per line (or use prompts_file)."),
                io.Combo.Input("prompts_file", options=_prompt_files(), tooltip="A .txt (one prompt per line) or .jsonl ('prompt' key) file in ComfyUI's input folder."),
                io.String.Input("validation_prompts", multiline=True, default="", tooltip="Held-out prompts, one per line, scored with fixed seeds to show progress."),
                io.Int.Input("width", default=defaults.width, min=16, max=2048, step=16, tooltip="Training width (the seeds train at 256x256)."),
                io.Int.Input("height", default=defaults.height, min=16, max=2048, step=16, tooltip="Training height."),
                io.Int.Input("frames", default=defaults.frames, min=1, max=1025, step=4, tooltip="Frames per sample, 4k+1 (49 CogVideoX-Fun/EasyAnimate, 81 Wan)."),
                io.Int.Input("sampling_steps", default=defaults.steps, min=1, max=1000, tooltip="Denoising steps per training sample."),
                io.Float.Input("cfg", default=defaults.guidance, min=1.0, max=30.0, step=0.1, tooltip="Guidance while sampling for training (seeds: 6)."),
                io.Combo.Input("strategy", options=list(STRATEGIES), default=defaults.strategy, tooltip="Which denoising steps carry gradients: last, tail (last K), uniform, random, list, or cutoff (VADER: a random step to the end)."),
                io.Int.Input("backprop_steps", default=defaults.backprop_steps, min=1, max=1000, tooltip="K for tail / uniform / random."),
                io.Int.Input("decoded_latents", default=defaults.decoded_latents, min=1, max=64, tooltip="Latent frames decoded for the reward (1 = the first frame, as the seeds)."),
                io.Float.Input("learning_rate", default=defaults.learning_rate, min=1e-7, max=1.0, step=1e-6, tooltip="AdamW learning rate."),
                io.Int.Input("rank", default=defaults.rank, min=1, max=1024, tooltip="LoRA rank (seeds: 128)."),
                io.Float.Input("alpha", default=defaults.alpha, min=0.1, max=2048.0, step=1.0, tooltip="LoRA alpha (seeds: 64)."),
                io.Int.Input("train_steps", default=defaults.max_steps, min=1, max=1_000_000, tooltip="Optimizer steps."),
                io.Int.Input("checkpoint_every", default=defaults.checkpoint_every, min=1, max=1_000_000, tooltip="Steps between checkpoints (cancel also saves one)."),
                io.Int.Input("seed", default=defaults.seed, min=0, max=2**31 - 1, control_after_generate=False, tooltip="Seed of the LoRA initialisation and of every step's noise and prompts."),
                io.Boolean.Input("gradient_checkpointing", default=defaults.gradient_checkpointing, tooltip="Recompute activations in backward (much less memory, ~30% slower)."),
                io.String.Input("lora_name", default="my_reward_lora", tooltip="File name of the finished LoRA (models/loras/video_reward/<name>.safetensors)."),
            ],
            outputs=[io.String.Output(display_name="job_id", tooltip="Connect to Training Status or Cancel Training.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name: str, **_) -> str | float:
        """Queueing again re-runs the node when its job failed or was cancelled (so it resumes); otherwise the
        cached job id stands."""
        job = job_exporting_to(jobs_root(), _export_path(lora_name))
        if job is None:
            return lora_name
        state = job.status().get("state", "")
        return time.time() if state in ("failed", "cancelled") else state

    @classmethod
    def execute(cls, family: str, model_folder: str, wan_high: str, wan_low: str, wan_vae: str, wan_text_encoder: str,
                expert: str, reward: str, reward_weight: float, reward_2: str, reward_2_weight: float, prompts: str,
                prompts_file: str, validation_prompts: str, width: int, height: int, frames: int, sampling_steps: int,
                cfg: float, strategy: str, backprop_steps: int, decoded_latents: int, learning_rate: float, rank: int,
                alpha: float, train_steps: int, checkpoint_every: int, seed: int, gradient_checkpointing: bool,
                lora_name: str) -> io.NodeOutput:
        import comfy.model_management
        import folder_paths

        key = FAMILIES[family]
        wan = {"wan_high": wan_high, "wan_low": wan_low, "wan_vae": wan_vae, "wan_text_encoder": wan_text_encoder}
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        prompt_path = ""
        if prompts_file != NONE:
            found = resolve_inside([Path(folder_paths.get_input_directory())], prompts_file)
            if found is None:
                raise FileNotFoundError(f"{prompts_file} is not in ComfyUI's input folder")
            prompt_path = str(found)
        if not lines and not prompt_path:
            raise ValueError("write training prompts (one per line) or choose a prompts file")
        chosen = [{"key": reward, "weight": reward_weight}] + ([{"key": reward_2, "weight": reward_2_weight}] if reward_2 != NONE else [])
        export_to = _export_path(lora_name)
        name = export_to.name.removesuffix(".safetensors")
        if not name:
            raise ValueError("give the LoRA a file name")
        config = TrainConfig.from_dict(dict(
            family=key, model=_model_files(key, model_folder, wan), rewards=chosen,
            reward_roots=[str(r) for r in reward_model_roots()], prompts=lines, prompts_file=prompt_path,
            validation_prompts=[line.strip() for line in validation_prompts.splitlines() if line.strip()],
            expert=expert, width=width, height=height, frames=frames, steps=sampling_steps, guidance=cfg,
            strategy=strategy, backprop_steps=backprop_steps, decoded_latents=decoded_latents,
            learning_rate=learning_rate, rank=rank, alpha=alpha, max_steps=train_steps,
            checkpoint_every=checkpoint_every, seed=seed, gradient_checkpointing=gradient_checkpointing,
        ))
        job = _same_job(config, export_to)
        state = job.status().get("state") if job is not None else None
        if state in ACTIVE + ("finished",):
            return io.NodeOutput(job.id, ui=ui.PreviewText(f"training job {job.id} is {state}"))
        if job is None and export_to.exists():
            raise FileExistsError(f"loras/{LORA_SUBFOLDER}/{name}.safetensors exists already; choose another lora_name")
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        if job is None:
            job = create_job(jobs_root(), config, export_to=export_to, name=name)
        start(job)  # a new job, or a failed / cancelled one resumed from its last checkpoint
        threading.Thread(target=_watch, args=(job, cls.hidden.unique_id), daemon=True, name=f"watch {job.id}").start()
        return io.NodeOutput(job.id, ui=ui.PreviewText(f"started training job {job.id}"))


def _image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


class TrainingStatus(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardTrainingStatus",
            display_name="Training Status",
            category=CATEGORY,
            description="Where a training job stands: progress text, the loss and reward curves, the latest sample frames, "
            "and the LoRA file once it has finished. Runs again on every queue.",
            is_output_node=True,
            inputs=[io.String.Input("job_id", tooltip="From Train Reward LoRA (or a job folder name in output/video_reward_jobs).")],
            outputs=[
                io.String.Output(display_name="status", tooltip="Progress text."),
                io.Image.Output(display_name="curves", tooltip="Training reward and loss per step; held-out reward."),
                io.Image.Output(display_name="samples", tooltip="First frames of the latest training samples."),
                io.String.Output(display_name="lora_name", tooltip="The finished LoRA in the loras list ('' until finished)."),
                io.String.Output(display_name="state", tooltip="queued, running, finished, failed or cancelled."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, job_id: str) -> float:
        return time.time()

    @classmethod
    def execute(cls, job_id: str) -> io.NodeOutput:
        import folder_paths

        job = find_job(jobs_root(), job_id.strip())
        status = job.status()
        text = describe(job, status)
        samples_file = job.samples / "latest.png"
        if samples_file.is_file():
            from PIL import Image

            samples = _image(np.asarray(Image.open(samples_file).convert("RGB")))
        else:
            samples = torch.zeros(1, 64, 64, 3)
        lora_name = ""
        if status.get("state") == "finished" and status.get("lora"):
            path = Path(status["lora"])
            for root in folder_paths.get_folder_paths("loras"):
                if path.is_relative_to(root):
                    lora_name = path.relative_to(root).as_posix()
        return io.NodeOutput(text, _image(training_curves(job.metrics())), samples, lora_name, status.get("state", ""),
                             ui=ui.PreviewText(text))


class CancelTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CancelRewardTraining",
            display_name="Cancel Training",
            category=CATEGORY,
            description="Asks a training job to stop; it saves a checkpoint after the current step (resume continues from it).",
            is_output_node=True,
            not_idempotent=True,
            inputs=[io.String.Input("job_id", tooltip="The job to cancel.")],
            outputs=[io.String.Output(display_name="status", tooltip="What happened.")],
        )

    @classmethod
    def fingerprint_inputs(cls, job_id: str) -> float:
        return time.time()

    @classmethod
    def execute(cls, job_id: str) -> io.NodeOutput:
        job = find_job(jobs_root(), job_id.strip())
        state = job.status().get("state")
        if state not in ACTIVE:
            text = f"job {job.id} is already {state}"
        else:
            job.request_cancel()
            text = f"cancel requested for job {job.id}; it stops after the current step and saves a checkpoint"
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES: list[type[io.ComfyNode]] = [TrainRewardLoRA, TrainingStatus, CancelTraining]
