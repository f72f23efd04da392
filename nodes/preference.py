"""Nodes of the VideoDPO pipeline: build a preference dataset from N videos per prompt, and train a LoRA on it by
Diffusion-DPO (each a job in its own process; Training Status and Cancel Training serve both)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..reward.files import output_path
from ..reward.seeds import MAX_SEED
from ..training.config import TrainConfig, settings_of
from ..training.jobs.jobs import Job
from ..training.preference.config import PairsConfig
from ..training.preference.dataset import PAIRS_FILE, dataset_format
from ..training.preference.pairs import PAIR_RULES
from .folders import PREFERENCE_DATASETS, model_entry, roots
from .training import (
    CATEGORY, LINKED, NONE, JobNode, _lines, direct_settings, guard_inputs, job_settings, engine_settings, lora_export_path,
    lora_inputs, memory_inputs, model_inputs, prompt_inputs, reward_inputs, video_inputs,
)

PAIR_INPUTS = ("width", "height", "frames", "sampling_steps", "cfg", "videos_per_prompt", "pair_rule", "min_gap",
               "alpha", "seed")
DPO_INPUTS = ("expert", "sampling_steps", "cfg", "beta", "validation_pairs", "learning_rate", "rank", "alpha",
              "train_steps", "checkpoint_every", "seed", "gradient_checkpointing")


def dataset_names() -> list[str]:
    """The datasets in models/preference_datasets: folders holding a pair.json."""
    names = []
    for root in roots(PREFERENCE_DATASETS):
        if root.is_dir():
            names += [p.name for p in sorted(root.iterdir()) if (p / PAIRS_FILE).is_file()]
    return [NONE, *dict.fromkeys(names)]


def dataset_target(name: str) -> Path:
    """Where a new dataset named `name` goes: models/preference_datasets/<name> (a name with `..`, a path or an
    absolute name is refused)."""
    import folder_paths

    name = name.strip()
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"dataset_name: give the dataset a plain folder name, got '{name}'")
    return output_path(Path(folder_paths.get_folder_paths(PREFERENCE_DATASETS)[0]), name, "", overwrite=True)


def pairs_config(inputs: dict[str, Any]) -> tuple[PairsConfig, Path]:
    """The validated PairsConfig of Build Preference Pairs' inputs, and where the dataset goes."""
    name = inputs.get("dataset_name")
    target = dataset_target("linked" if name is None else name)
    settings = {**job_settings(inputs), **direct_settings(inputs, PAIR_INPUTS), "dataset": str(target)}
    return PairsConfig.from_dict(settings), target


def dpo_config(inputs: dict[str, Any]) -> TrainConfig:
    """The validated TrainConfig (method dpo) of Train DPO LoRA's inputs: the clips' size and frame count are the
    dataset's. A dataset linked from Build Preference Pairs does not exist yet when the graph is queued: the other
    settings are checked then, the dataset when the node runs."""
    name = inputs.get("dataset")
    settings = {**job_settings(inputs, prompts=False), **direct_settings(inputs, DPO_INPUTS), **engine_settings(inputs),
                "method": "dpo", "validation_prompts": _lines(inputs.get("validation_prompts") or "")}
    if inputs.get("dpo_alpha") is not None and inputs["dpo_alpha"] >= 0:  # -1: the dataset's own
        settings["dpo_alpha"] = inputs["dpo_alpha"]
    if name is None:
        settings["dataset"] = LINKED
        return TrainConfig(**settings_of(TrainConfig, settings, "training")).validate(dataset=False)
    if name == NONE:
        raise ValueError("dataset: choose a preference dataset (models/preference_datasets), or link Build Preference Pairs")
    folder = model_entry(PREFERENCE_DATASETS, name)
    clips = dataset_format(folder)
    settings.update(dataset=str(folder), frames=clips.frames, height=clips.height, width=clips.width)
    return TrainConfig.from_dict(settings)


class BuildPreferencePairs(JobNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = PairsConfig(family="cogvideox", model={}, dataset="")
        return io.Schema(
            node_id="BuildPreferencePairs",
            display_name="Build Preference Pairs",
            category=CATEGORY,
            description="Starts a job that samples N videos per prompt, scores each with the reward mix (the mean over "
            "its frames) and pairs them (VideoDPO), writing a dataset of mp4 clips with their latents into "
            "models/preference_datasets. Returns its id at once; the dataset output waits until it has finished.",
            is_output_node=True,
            inputs=[
                *model_inputs("make the videos with"),
                *reward_inputs("The score of each video"),
                *prompt_inputs("Prompts to make videos of"),
                *video_inputs(defaults, "videos"),
                io.Int.Input("videos_per_prompt", default=defaults.videos_per_prompt, min=2, max=64, tooltip="Videos per prompt, each from its own seed (VideoDPO samples several and pairs them). More videos give best/worst pairs further apart in score, a clearer preference to learn; each video is one full sampling."),
                io.Combo.Input("pair_rule", options=list(PAIR_RULES), default=defaults.pair_rule, tooltip="best_vs_worst: one pair per prompt, its best video against its worst; all_pairs: every pair of a prompt's videos whose scores differ by more than min_gap."),
                io.Float.Input("min_gap", default=defaults.min_gap, min=0.0, max=1000.0, step=0.001, tooltip="Keep only pairs whose score gap is above this."),
                io.Float.Input("alpha", default=defaults.alpha, min=0.0, max=10.0, step=0.1, tooltip="VideoDPO's re-weighting exponent, stored with the dataset: pairs with rarer score gaps weigh (p_max/p)^alpha (0: all weigh 1)."),
                io.Int.Input("seed", default=defaults.seed, min=0, max=MAX_SEED, control_after_generate=False, tooltip="Seed of every video's noise (video n of prompt p always gets the same)."),
                io.String.Input("dataset_name", default="my_preference_pairs", tooltip="Folder of the dataset in models/preference_datasets (it must not exist yet)."),
            ],
            outputs=[
                io.String.Output(display_name="job_id", tooltip="Connect to Training Status or Cancel Training."),
                io.Combo.Output(display_name="dataset", tooltip="The finished dataset, for Train DPO LoRA's dataset input; the nodes it feeds wait (skipped, no error) until the job has finished."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def job_config(cls, inputs: dict[str, Any]) -> tuple[PairsConfig, Path]:
        return pairs_config(inputs)

    @classmethod
    def export_path(cls, inputs: dict[str, Any]) -> Path:
        name = inputs.get("dataset_name")
        return dataset_target("linked" if name is None else name)

    @classmethod
    def outputs(cls, job: Job) -> tuple[Any, ...]:
        finished = job.status().get("state") == "finished"
        return job.id, Path(job.settings()["dataset"]).name if finished else ExecutionBlocker(None)


class TrainDPOLoRA(JobNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = TrainConfig(family="cogvideox", model={}, method="dpo")
        return io.Schema(
            node_id="TrainDPOLoRA",
            display_name="Train DPO LoRA",
            category=CATEGORY,
            description="Starts a Diffusion-DPO training job on a preference dataset (ours or VideoDPO's layout) and "
            "returns its id at once. The reference is the model with the LoRA switched off. The finished LoRA appears "
            "in the loras list under video_reward/.",
            is_output_node=True,
            inputs=[
                *model_inputs("train a LoRA for"),
                io.Combo.Input("dataset", options=dataset_names(), tooltip="A preference dataset in models/preference_datasets (its clips set the size and frame count), or link Build Preference Pairs' dataset."),
                io.Combo.Input("expert", options=["low", "high"], default=defaults.expert, tooltip="Wan2.2: which expert the LoRA trains (DPO draws timesteps in its range)."),
                io.Float.Input("beta", default=defaults.beta, min=1.0, max=1e6, step=100.0, tooltip="DPO's beta: how strongly the preference may pull the model from the reference (VideoDPO: 5000)."),
                io.Float.Input("dpo_alpha", default=-1.0, min=-1.0, max=10.0, step=0.1, tooltip="Re-weighting exponent of the pairs (p_max/p)^alpha; -1 uses the dataset's own."),
                io.Int.Input("validation_pairs", default=2, min=0, max=10_000, tooltip="The dataset's last pairs, held out: their implicit accuracy shows whether the preference generalises."),
                io.String.Input("validation_prompts", multiline=True, default="", tooltip="Held-out prompts, one per line: sampled with fixed seeds and scored whole with the reward mix below."),
                *reward_inputs("The reward mix that scores the held-out prompts' videos"),
                *video_inputs(defaults, "held-out videos")[3:],
                *lora_inputs(defaults),
                *guard_inputs(defaults, backprop=False),
                *memory_inputs(defaults),
            ],
            outputs=[io.String.Output(display_name="job_id", tooltip="Connect to Training Status or Cancel Training.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def job_config(cls, inputs: dict[str, Any]) -> tuple[TrainConfig, Path]:
        return dpo_config(inputs), lora_export_path(inputs)


NODES: list[type[io.ComfyNode]] = [BuildPreferencePairs, TrainDPOLoRA]
