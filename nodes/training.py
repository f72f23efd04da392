"""Nodes that start, watch and cancel reward-LoRA training jobs (each job runs in its own process)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from ..reward.files import ModelFileError, output_path, resolve_inside
from ..reward.registry import REWARDS
from ..reward.seeds import MAX_SEED
from ..training.config import TrainConfig
from ..training.jobs.jobs import ACTIVE, Job, JobConfig, find_job, job_exporting_to, open_job, start
from ..training.jobs.summary import describe, job_curves
from ..training.steps import STRATEGIES
from .folders import VIDEO_MODEL_FOLDERS, model_entry, reward_model_roots, roots

CATEGORY = "video reward/training"
NONE = "none"
FAMILIES = {"CogVideoX-Fun": "cogvideox", "EasyAnimate": "easyanimate", "Wan2.2": "wan2.2"}
LORA_SUBFOLDER = "video_reward"
PROMPT_FILE_TYPES = (".txt", ".jsonl")
INPUT_FOLDER = "ComfyUI's input folder"
FIRST_FAMILY = next(iter(FAMILIES))
# Node inputs that are TrainConfig settings as they are (under the config's name where RENAMED says another).
DIRECT = ("expert", "width", "height", "frames", "sampling_steps", "cfg", "strategy", "backprop_steps", "decoded_latents",
          "learning_rate", "rank", "alpha", "train_steps", "checkpoint_every", "seed", "gradient_checkpointing")
RENAMED = {"sampling_steps": "steps", "cfg": "guidance", "train_steps": "max_steps"}
LINKED = "(linked from another node)"
STARTED = {"new": "started", "resume": "resumed from its last checkpoint",
           "replace": "started; it replaces a failed or cancelled job with other settings (kept in its folder)"}
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

    root = folder_paths.get_input_directory()
    files, _ = folder_paths.recursive_search(root)  # as ComfyUI lists them, links followed
    found = folder_paths.filter_files_extensions(files, PROMPT_FILE_TYPES)
    return [NONE, *(name for name in found if (Path(root) / name).exists())]  # no dangling links


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
    return {"folder": str(model_entry(VIDEO_MODEL_FOLDERS[label], model_folder.removeprefix(prefix)))}


def _export_path(lora_name: str) -> Path:
    """Where the finished LoRA named `lora_name` goes: models/loras/video_reward/<name>.safetensors (a name with `..`
    or an absolute name is refused)."""
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER
    return output_path(folder, lora_name.strip(), ".safetensors", overwrite=True)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def job_settings(inputs: dict[str, Any], prompts: bool = True) -> dict[str, Any]:
    """The settings every job node shares (family, model files, rewards, prompts), from its inputs. An input that
    is None is linked from another node (its value is known only when the graph runs): its setting keeps the default,
    its file is not looked up, and a stand-in prompt (LINKED) holds the place of linked prompts. With `prompts` False
    the node has no training prompts."""
    import folder_paths

    known = {name: value for name, value in inputs.items() if value is not None}
    if known.get("family", FIRST_FAMILY) not in FAMILIES:
        raise ValueError(f"family '{known['family']}' is not one of {', '.join(FAMILIES)}")
    key = FAMILIES[known.get("family", FIRST_FAMILY)]
    settings: dict[str, Any] = {"family": key, "reward_roots": [str(r) for r in reward_model_roots()]}
    if prompts:
        lines = [LINKED] if inputs.get("prompts") is None else _lines(inputs["prompts"])
        prompt_path = LINKED if inputs.get("prompts_file") is None else ""
        if known.get("prompts_file", NONE) != NONE:
            found = resolve_inside([Path(folder_paths.get_input_directory())], known["prompts_file"], INPUT_FOLDER)
            if found is None:
                raise FileNotFoundError(f"prompts_file: {known['prompts_file']} is not in {INPUT_FOLDER}")
            prompt_path = str(found)
        if not lines and not prompt_path:
            raise ValueError("prompts: write prompts (one per line) or choose a prompts file")
        settings.update(prompts=lines, prompts_file=prompt_path)
    models = {name: known.get(name, NONE) for name in ("model_folder", *WAN_FILES)}
    if any(inputs.get(name, NONE) is None for name in models):
        settings["model"] = dict.fromkeys(("folder", *(role for _, role in WAN_FILES.values())), LINKED)  # looked up when it runs
    else:
        settings["model"] = _model_files(key, models.pop("model_folder"), models)
    settings["rewards"] = [{"key": known.get("reward", "hps_v2.1"), "weight": known.get("reward_weight", 1.0)}]
    if known.get("reward_2", NONE) != NONE:
        settings["rewards"].append({"key": known["reward_2"], "weight": known.get("reward_2_weight", 1.0)})
    if known.get("shift"):  # 0: the model's own shift
        settings["shift"] = known["shift"]
    return settings


def direct_settings(inputs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The inputs `names` that are config settings as they are (under the config's name where RENAMED says another)."""
    return {RENAMED.get(name, name): inputs[name] for name in names if inputs.get(name) is not None}


def train_config(inputs: dict[str, Any]) -> tuple[TrainConfig, Path]:
    """The validated TrainConfig of Train Reward LoRA's inputs, and where the finished LoRA goes. Nothing is written."""
    config = TrainConfig.from_dict(dict(**job_settings(inputs), **direct_settings(inputs, DIRECT), **engine_settings(inputs),
                                        validation_prompts=_lines(inputs.get("validation_prompts") or "")))
    return config, lora_export_path(inputs)


def lora_export_path(inputs: dict[str, Any]) -> Path:
    """Where the LoRA a training node names goes (a linked name: any valid name, only the path's form is checked)."""
    name = inputs.get("lora_name")
    export_to = _export_path("linked" if name is None else name)
    if not export_to.name.removesuffix(".safetensors"):
        raise ValueError("lora_name: give the LoRA a file name")
    return export_to


_WATCHED: set[str] = set()  # jobs a _watch thread follows


def _start_watch(job: Job, node_id: str | None) -> None:
    """One _watch thread per running job (queueing the graph again while it runs starts none)."""
    if job.id not in _WATCHED:
        _WATCHED.add(job.id)
        threading.Thread(target=_watch, args=(job, node_id), daemon=True, name=f"watch {job.id}").start()


def _watch(job: Job, node_id: str | None) -> None:
    """Push the job's `describe` text to the browser whenever it changes, until the job ends; the pack's frontend
    extension (web/video_reward.js) shows it on the Training Status nodes that watch this job (`node` is the Train
    Reward LoRA node that started it)."""
    from server import PromptServer

    last = None
    try:
        while True:
            status = job.status()
            text = describe(job, status)
            if text != last:
                PromptServer.instance.send_sync("video_reward.training", {**status, "job": job.id, "node": node_id, "text": text})
                last = text
            if status.get("state") not in ACTIVE:
                return
            time.sleep(2.0)
    finally:
        _WATCHED.discard(job.id)


def _job_ui(job: Job, what: str) -> dict[str, list[str]]:
    """What a node that starts a job shows: its job and where the job's progress shows (Training Status is the one
    place), and the job id, by which the frontend extension tells this job's updates from those of the node's earlier
    jobs."""
    kind = "preference-pair job" if job.builds_pairs() else "training job"
    return {"text": [f"{kind} {job.id} {what}\nits progress and results: Training Status"], "video_reward_job": [job.id]}


def model_inputs(what: str) -> list[io.Input]:
    """The family and model-file inputs of a node that starts a job (`what`: what the job does, for the tooltip)."""
    return [
        io.Combo.Input("family", options=list(FAMILIES), tooltip=f"The model family to {what}."),
        io.Combo.Input("model_folder", options=_model_folders(), tooltip="CogVideoX-Fun / EasyAnimate: the model folder (models/CogVideoX_Fun or models/EasyAnimate)."),
        io.Combo.Input("wan_high", options=_files("diffusion_models"), tooltip="Wan2.2: the high-noise expert (models/diffusion_models)."),
        io.Combo.Input("wan_low", options=_files("diffusion_models"), tooltip="Wan2.2: the low-noise expert (models/diffusion_models)."),
        io.Combo.Input("wan_vae", options=_files("vae"), tooltip="Wan2.2: the Wan 2.1 VAE (models/vae)."),
        io.Combo.Input("wan_text_encoder", options=_files("text_encoders"), tooltip="Wan2.2: the UMT5-XXL text encoder (models/text_encoders)."),
    ]


def reward_inputs(role: str) -> list[io.Input]:
    """The reward-mix inputs (`role`: what the mix is for, for the tooltip)."""
    rewards = list(REWARDS)
    return [
        io.Combo.Input("reward", options=rewards, default="hps_v2.1", tooltip=f"{role} (files in models/reward_models)."),
        io.Float.Input("reward_weight", default=1.0, min=0.0, max=100.0, step=0.05, tooltip="Weight of the first reward in a mix."),
        io.Combo.Input("reward_2", options=[NONE, *rewards], default=NONE, tooltip="Optional second reward; a mix uses normalised scores."),
        io.Float.Input("reward_2_weight", default=1.0, min=0.0, max=100.0, step=0.05, tooltip="Weight of the second reward."),
    ]


def prompt_inputs(role: str) -> list[io.Input]:
    return [
        io.String.Input("prompts", multiline=True, default="", tooltip=f"{role}, one per line (or use prompts_file)."),
        io.Combo.Input("prompts_file", options=_prompt_files(), tooltip="A .txt (one prompt per line) or .jsonl ('prompt' key) file in ComfyUI's input folder."),
    ]


def video_inputs(defaults: Any, role: str) -> list[io.Input]:
    """The size and sampling inputs of a job that samples videos (`role`: which videos, for the tooltips)."""
    return [
        io.Int.Input("width", default=defaults.width, min=16, max=2048, step=16, tooltip=f"Width of the {role} (the seeds train at 256x256)."),
        io.Int.Input("height", default=defaults.height, min=16, max=2048, step=16, tooltip=f"Height of the {role}."),
        io.Int.Input("frames", default=defaults.frames, min=1, max=1025, step=4, tooltip="Frames per video, 4k+1 (49 CogVideoX-Fun/EasyAnimate, 81 Wan)."),
        io.Int.Input("sampling_steps", default=defaults.steps, min=1, max=1000, tooltip=f"Denoising steps per video of the {role}."),
        io.Float.Input("cfg", default=defaults.guidance, min=1.0, max=30.0, step=0.1, tooltip=f"Guidance while sampling the {role} (seeds: 6)."),
        io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01, tooltip=f"Wan2.2 only (0 for the other families): the flow-matching shift of the {role}. 0 follows the experts loaded, at their official values: 12 for T2V A14B, 5 for I2V and Fun A14B InP (Wan2.2's and VideoX-Fun's configs; ComfyUI's Wan2.2 templates sample at 8). Set the shift you will sample at, so that the switch from the high- to the low-noise expert falls where it will then."),
    ]


def lora_inputs(defaults: TrainConfig) -> list[io.Input]:
    """The LoRA and optimisation inputs every training node has."""
    return [
        io.Float.Input("learning_rate", default=defaults.learning_rate, min=1e-7, max=1.0, step=1e-6, tooltip="AdamW learning rate."),
        io.Int.Input("rank", default=defaults.rank, min=1, max=1024, tooltip="LoRA rank (seeds: 128)."),
        io.Float.Input("alpha", default=defaults.alpha, min=0.1, max=2048.0, step=1.0, tooltip="LoRA alpha (seeds: 64)."),
        io.Int.Input("train_steps", default=defaults.max_steps, min=1, max=1_000_000, tooltip="Optimizer steps."),
        io.Int.Input("checkpoint_every", default=defaults.checkpoint_every, min=1, max=1_000_000, tooltip="Steps between checkpoints (cancel also saves one)."),
        io.Int.Input("seed", default=defaults.seed, min=0, max=MAX_SEED, control_after_generate=False, tooltip="Seed of the LoRA initialisation and of every step's random draws."),
        io.Boolean.Input("gradient_checkpointing", default=defaults.gradient_checkpointing, tooltip="Recompute activations in backward (much less memory, ~30% slower)."),
        io.String.Input("lora_name", default="my_reward_lora", tooltip="File name of the finished LoRA (models/loras/video_reward/<name>.safetensors)."),
    ]


def guard_inputs(defaults: TrainConfig, backprop: bool) -> list[io.Input]:
    """The guards against reward hacking (training.engine.guards): a judge, early stopping on it, diversity, and
    with `backprop` the drift and dynamism penalties. Optional, as the memory options are: an API graph that leaves
    them out trains unguarded, as before they existed."""
    rewards = [NONE, *REWARDS]
    inputs = [
        io.Combo.Input("judge", optional=True, options=rewards, default=NONE, tooltip="A held-out judge: a reward NOT trained on, scored on the validation prompts at every evaluation (e.g. train on HPS, judge with PickScore). The job's LoRA is then the one of the judge's best evaluation. Needs validation_prompts."),
        io.Combo.Input("judge_2", optional=True, options=rewards, default=NONE, tooltip="Optional second judge reward (a mix of normalised scores, e.g. PickScore + Dynamism)."),
        io.Int.Input("patience", optional=True, default=defaults.patience, min=0, max=1000, tooltip="Early stopping: stop when the judge has not improved for this many evaluations (0: never)."),
        io.Float.Input("judge_drop", optional=True, default=defaults.judge_drop, min=0.0, max=0.99, step=0.01, tooltip="Early stopping: stop when the judge falls more than this fraction of its best below its best (0: never)."),
        io.Int.Input("diversity_seeds", optional=True, default=defaults.diversity_seeds, min=0, max=16, tooltip="At each evaluation, sample each validation prompt with this many seeds and measure how different they look to the judge's image encoder (0: off; 2 or more)."),
    ]
    if backprop:
        inputs += [
            io.Float.Input("drift_weight", optional=True, default=defaults.drift_weight, min=0.0, max=1e6, step=0.001, tooltip="Drift penalty: this weight times the mean squared difference between the prediction with and without the LoRA on the steps with gradients (one more forward each); bounds how far the model moves from its base (0: off)."),
            io.Float.Input("dynamism_weight", optional=True, default=defaults.dynamism_weight, min=0.0, max=1e6, step=0.01, tooltip="Dynamism guard: this weight times the relative loss of motion against the model without the LoRA on the same noise (one more sampling pass per step; needs decoded_latents of 2 or more) (0: off)."),
        ]
    return inputs


def memory_inputs(defaults: TrainConfig) -> list[io.Input]:
    """The memory options of every training node (training.engine.fp8, training.engine.offload)."""
    return [
        io.Boolean.Input("fp8_base", optional=True, default=defaults.fp8_base, tooltip="Keep the transformers' frozen Linear weights (Wan2.2: both experts') in float8 (e4m3fn, one scale per tensor), upcast one layer at a time inside the forward; the LoRA trains in full precision. About halves the weights' memory (a Wan2.2 A14B expert: 27 to 14 GiB)."),
        io.Int.Input("block_swap", optional=True, default=defaults.block_swap, min=0, max=200, tooltip="Keep this many of the transformer's (Wan2.2: each expert's) last blocks in CPU memory and copy each to the GPU just before it runs (the next one ahead, on a side stream). Saves their weights' memory at the cost of host-to-GPU traffic on every forward; 0: off."),
        io.Boolean.Input("activation_offload", optional=True, default=defaults.activation_offload, tooltip="Move the activations saved for the backward of the steps with gradients to CPU memory (beside gradient checkpointing); slower, less GPU memory."),
    ]


def engine_settings(inputs: dict[str, Any]) -> dict[str, Any]:
    """The guard and memory settings of a training node's inputs."""
    judge = [{"key": inputs[name]} for name in ("judge", "judge_2") if inputs.get(name) not in (None, NONE)]
    names = ("patience", "judge_drop", "diversity_seeds", "drift_weight", "dynamism_weight", "fp8_base", "block_swap",
             "activation_offload")
    return {"judge": judge, **{name: inputs[name] for name in names if inputs.get(name) is not None}}


class JobNode(io.ComfyNode):
    """A node that starts a job in its own process and returns its id at once; queueing the graph again finds the
    job by where its result goes (the LoRA or dataset name), and resumes it when it failed or was cancelled."""

    @classmethod
    def job_config(cls, inputs: dict[str, Any]) -> tuple[JobConfig, Path]:
        """The validated config of the node's inputs and where the job's result goes; nothing is written."""
        raise NotImplementedError

    @classmethod
    def export_path(cls, inputs: dict[str, Any]) -> Path:
        return lora_export_path(inputs)

    @classmethod
    def outputs(cls, job: Job) -> tuple[Any, ...]:
        """The node's outputs for `job` (by default its id)."""
        return (job.id,)

    @classmethod
    def fingerprint_inputs(cls, **inputs) -> str | float:
        """Queueing again re-runs the node when its job failed or was cancelled (so it resumes) or changed state;
        otherwise the cached outputs stand."""
        try:
            job = job_exporting_to(jobs_root(), cls.export_path(inputs))
        except ValueError as err:
            return str(err)
        if job is None:
            return str(cls.export_path(inputs))
        state = job.status().get("state", "")
        return time.time() if state in ("failed", "cancelled") else state

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        """Refuse a setting that cannot work when the graph is queued, before a job exists (ComfyUI passes None for
        an input linked from another node: that one is checked when the node runs). ComfyUI skips its own range and
        list checks for the inputs a validate_inputs takes, so the widgets' bounds are checked here as well."""
        for spec in cls.define_schema().inputs:
            value, low, high = inputs.get(spec.id), getattr(spec, "min", None), getattr(spec, "max", None)
            if isinstance(value, (int, float)) and (low is not None and value < low or high is not None and value > high):
                return f"{spec.id} must be between {low} and {high}, got {value}"
        try:
            cls.job_config(inputs)
        except (ValueError, FileNotFoundError, ModelFileError) as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        import comfy.model_management

        config, export_to = cls.job_config(inputs)
        job, action = open_job(jobs_root(), config, export_to, name=export_to.name.removesuffix(".safetensors"))
        if action == "keep":
            state = job.status().get("state")
            if state in ACTIVE:
                _start_watch(job, cls.hidden.unique_id)
            return io.NodeOutput(*cls.outputs(job), ui=_job_ui(job, f"is {state}"))
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        start(job)  # a new job, or a failed / cancelled one resumed from where it stopped
        _start_watch(job, cls.hidden.unique_id)
        return io.NodeOutput(*cls.outputs(job), ui=_job_ui(job, STARTED[action]))


class TrainRewardLoRA(JobNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = TrainConfig(family="cogvideox", model={})
        return io.Schema(
            node_id="TrainRewardLoRA",
            display_name="Train Reward LoRA",
            category=CATEGORY,
            description="Starts a reward-backpropagation training job in its own process and returns its id at once. "
            "The finished LoRA appears in the loras list under video_reward/.",
            is_output_node=True,
            inputs=[
                *model_inputs("train a LoRA for"),
                io.Combo.Input("expert", options=["low", "high"], default=defaults.expert, tooltip="Wan2.2: which expert the LoRA trains; the other runs frozen."),
                *reward_inputs("The reward to maximise"),
                *prompt_inputs("Training prompts"),
                io.String.Input("validation_prompts", multiline=True, default="", tooltip="Held-out prompts, one per line, scored with fixed seeds to show progress."),
                *video_inputs(defaults, "training samples"),
                io.Combo.Input("strategy", options=list(STRATEGIES), default=defaults.strategy, tooltip="Which denoising steps carry gradients: last, tail (last K), uniform, random, list, or cutoff (VADER: a random step to the end)."),
                io.Int.Input("backprop_steps", default=defaults.backprop_steps, min=1, max=1000, tooltip="K for tail / uniform / random."),
                io.Int.Input("decoded_latents", default=defaults.decoded_latents, min=1, max=64, tooltip="Latent frames decoded for the reward (1 = the first frame, as the seeds)."),
                *lora_inputs(defaults),
                *guard_inputs(defaults, backprop=True),
                *memory_inputs(defaults),
            ],
            outputs=[io.String.Output(display_name="job_id", tooltip="Connect to Training Status or Cancel Training.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def job_config(cls, inputs: dict[str, Any]) -> tuple[TrainConfig, Path]:
        return train_config(inputs)


def _image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


class TrainingStatus(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardTrainingStatus",
            display_name="Training Status",
            category=CATEGORY,
            description="Where a job stands: progress text, the curves (a training job's loss and reward, a "
            "preference-pair job's video scores), the latest frames, and the LoRA once a training job has finished. "
            "Runs again on every queue.",
            is_output_node=True,
            inputs=[io.String.Input("job_id", tooltip="From Train Reward LoRA, Train DPO LoRA or Build Preference Pairs (or a job folder name in output/video_reward_jobs).")],
            outputs=[
                io.String.Output(display_name="status", tooltip="Progress text."),
                io.Image.Output(display_name="curves", tooltip="Training and held-out reward per step and the gradient norm "
                                "(the loss too where it is not just −reward × scale)."),
                io.Image.Output(display_name="samples", tooltip="First frames of the latest training samples."),
                io.Combo.Output(display_name="lora_name", tooltip="The finished LoRA in the loras list, for a LoRA loader's lora input; the nodes it feeds wait (skipped, no error) until the job has finished."),
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
        lora_name: str | ExecutionBlocker = ExecutionBlocker(None)  # the nodes it feeds wait, silently, for the LoRA
        if status.get("state") == "finished" and status.get("lora"):
            path = Path(status["lora"])
            for root in folder_paths.get_folder_paths("loras"):
                if path.is_relative_to(root):
                    lora_name = path.relative_to(root).as_posix()
        return io.NodeOutput(text, _image(job_curves(job)), samples, lora_name, status.get("state", ""), ui=ui.PreviewText(text))


class CancelTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CancelRewardTraining",
            display_name="Cancel Training",
            category=CATEGORY,
            description="Asks a job to stop: a training job saves a checkpoint after the current step, a preference-pair "
            "job keeps the videos it has made; queueing its node again resumes it.",
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
