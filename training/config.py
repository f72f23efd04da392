"""The training configuration: one dataclass is the single source of defaults for the node, the CLI and the tests.

Defaults follow the seeds' launch scripts (VideoX-Fun train_reward_lora): rank 128 / alpha 64, guidance 6, lr 1e-5,
weight decay 3e-2, eps 1e-10, gradient clipping 0.3, the last step carries gradients, the first latent is decoded.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..reward.composite import FRAME_MODES, LOSS_FORMS
from ..reward.registry import REWARDS
from ..reward.seeds import check_seed
from .families import family_class
from .steps import STRATEGIES

if TYPE_CHECKING:
    from .preference.dataset import PreferenceDataset

FAMILIES = ("cogvideox", "easyanimate", "wan2.2")
WAN_FILES = ("high", "low", "vae", "text_encoder")
EXPERTS = ("low", "high")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adamw8bit")
METHODS = ("reward_backprop", "dpo")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
KINDS = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text",
         "list[str]": "a list of texts", "list[int]": "a list of whole numbers"}


@dataclass
class RewardChoice:
    """One reward in the training mix: a registry key, its weight, and optional non-official file names."""

    key: str
    weight: float = 1.0
    checkpoint: str | None = None
    encoder: str | None = None


@dataclass
class TrainConfig:
    # Settings that leave the training trajectory (every loss and update) unchanged: a failed or cancelled job whose
    # settings differ only in these resumes from its checkpoints (e.g. one that ran out of memory, with block swap or
    # activation offload turned on); any other change starts a new job.
    resumable: ClassVar[tuple[str, ...]] = ("max_steps", "checkpoint_every", "validation_prompts", "validation_every",
                                            "sample_every", "block_swap", "activation_offload")

    family: str
    model: dict[str, str]  # {"folder": ...} (CogVideoX-Fun, EasyAnimate) or the Wan2.2 files {high, low, vae, text_encoder}
    rewards: list[RewardChoice] = field(default_factory=lambda: [RewardChoice("hps_v2.1")])
    reward_roots: list[str] = field(default_factory=list)
    loss: str = "negative"
    loss_target: float | None = None  # None: the reward's own target (one reward) or 1.0 (a mix)
    prompts: list[str] = field(default_factory=list)
    prompts_file: str = ""
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 50
    negative_prompt: str = ""
    expert: str = "low"
    offload_idle_expert: bool = True
    height: int = 256
    width: int = 256
    frames: int = 49
    steps: int = 50
    guidance: float = 6.0
    shift: float | None = None  # Wan2.2's sampling shift; None: the experts' official value (training.families.wan.SHIFTS)
    strategy: str = "last"
    backprop_steps: int = 1
    random_start: int = 0
    random_end: int | None = None
    step_list: list[int] = field(default_factory=list)
    stop_input_gradient: bool = False
    decoded_latents: int = 1
    frame_mode: str = "all"
    frame_count: int = 1
    gradient_checkpointing: bool = True
    vae_gradient_checkpointing: bool = False
    rank: int = 128
    alpha: float = 64.0
    lora_targets: list[str] = field(default_factory=list)
    lora_skip: list[str] | None = None  # None: the family's default (Wan2.2: "ffn")
    optimizer: str = "adamw"
    learning_rate: float = 1e-5
    weight_decay: float = 3e-2
    adam_eps: float = 1e-10
    max_grad_norm: float = 0.3
    batch_size: int = 1
    accumulation: int = 1
    max_steps: int = 1000
    checkpoint_every: int = 100
    sample_every: int = 10
    seed: int = 42
    precision: str = "auto"
    device: str = "auto"
    fsdp: bool = False  # shard the transformers across the processes of `accelerate launch` (see training.distributed.sharding)
    # Memory options (training.engine.offload, training.engine.fp8), for every method:
    activation_offload: bool = False  # the saved activations of the steps with gradients kept on the CPU until the backward
    block_swap: int = 0  # each transformer's last N blocks kept on the CPU, copied to the device around their use
    fp8_base: bool = False  # the transformers' frozen Linear weights stored as float8 (scaled), upcast per layer
    method: str = "reward_backprop"  # "reward_backprop" or "dpo" (Diffusion-DPO on a preference dataset)
    dataset: str = ""  # the preference dataset folder (dpo)
    beta: float = 5000.0  # the DPO β (VideoDPO's default)
    dpo_alpha: float | None = None  # the pairs' re-weighting exponent α; None: the dataset's own
    validation_pairs: int = 0  # dpo: the dataset's last pairs, held out of training for the implicit-accuracy evaluation
    # Guards against reward hacking (training.engine.guards); all off by default.
    judge: list[RewardChoice] = field(default_factory=list)  # a reward mix never trained on, scored on the validation prompts
    patience: int = 0  # stop when the judge has not improved for this many evaluations (0: never)
    judge_drop: float = 0.0  # stop when the judge falls more than this fraction of its best below its best (0: never)
    drift_weight: float = 0.0  # reward_backprop: weight of the mean squared difference from the LoRA-off prediction
    dynamism_weight: float = 0.0  # reward_backprop: weight of the relative loss of motion against the LoRA-off sample
    diversity_seeds: int = 0  # seeds per validation prompt for the judge-embedding diversity (0: not measured)

    def validate(self, dataset: bool = True) -> "TrainConfig":
        """Raise ValueError naming the first setting that cannot work (and what it allows); nothing is loaded. With
        `dataset` False a dpo config's dataset is not read (it does not exist yet: a node makes it first)."""
        check_types(self)
        check_model(self.family, self.model)
        check_rewards(self.rewards)
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.method == "reward_backprop" and not self.prompts and not self.prompts_file:
            raise ValueError("give training prompts (a list, or a .txt / .jsonl prompts file)")
        checks = {
            "expert": (self.expert, EXPERTS), "strategy": (self.strategy, STRATEGIES),
            "precision": (self.precision, PRECISIONS), "optimizer": (self.optimizer, OPTIMIZERS),
            "loss": (self.loss, LOSS_FORMS), "frame_mode": (self.frame_mode, FRAME_MODES),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} '{value}' is not one of {', '.join(allowed)}")
        positive = {"steps": self.steps, "rank": self.rank, "batch_size": self.batch_size, "accumulation": self.accumulation,
                    "max_steps": self.max_steps, "decoded_latents": self.decoded_latents, "backprop_steps": self.backprop_steps,
                    "checkpoint_every": self.checkpoint_every, "learning_rate": self.learning_rate, "alpha": self.alpha,
                    "frame_count": self.frame_count, "validation_every": self.validation_every,
                    "sample_every": self.sample_every, "max_grad_norm": self.max_grad_norm, "adam_eps": self.adam_eps,
                    "beta": self.beta}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._check_sampling()
        check_seed(self.seed)
        if self.fsdp and self.optimizer == "adamw8bit":
            raise ValueError("the 8-bit AdamW optimizer does not work on FSDP-sharded weights; use adamw with fsdp")
        self._check_memory_options()
        if self.vae_gradient_checkpointing and self.family != "cogvideox":
            raise ValueError(f"VAE gradient checkpointing works for the CogVideoX VAE only; {self.family}'s VAE does not support it")
        self._check_guards()
        if self.method == "reward_backprop":
            decoded = self.decoded_frames()
            for choice in self.rewards:
                needed = REWARDS[choice.key].min_frames
                if decoded < needed:
                    raise ValueError(f"rewards: {REWARDS[choice.key].label} scores change between frames and needs {needed} "
                                     f"decoded frames; decoded_latents {self.decoded_latents} decodes {decoded}: decode 2 "
                                     "latents or more")
        if self.method == "dpo" and dataset:
            self.preference_dataset()
        return self

    def preference_dataset(self) -> "PreferenceDataset":
        """The dpo method's dataset, read and checked against the family, the clip size and the held-out pairs (no
        model loads)."""
        from .preference.dataset import PreferenceDataError, read_dataset
        from .preference.video import ClipFormat

        if not self.dataset:
            raise ValueError("method 'dpo' needs a preference dataset folder (setting 'dataset')")
        if self.dpo_alpha is not None and self.dpo_alpha < 0:
            raise ValueError(f"dpo_alpha must be 0 or more (or null for the dataset's own), got {self.dpo_alpha}")
        data = read_dataset(Path(self.dataset), family=self.family, clip_format=ClipFormat(self.frames, self.height, self.width),
                            alpha=self.dpo_alpha)
        if not 0 <= self.validation_pairs < len(data.pairs):
            raise PreferenceDataError(f"validation_pairs {self.validation_pairs}: {data.folder} has {len(data.pairs)} "
                                      "pairs; hold out fewer, so that some remain to train on")
        return data

    def decoded_frames(self) -> int:
        """How many frames decoding `decoded_latents` latents gives (reward backpropagation scores those)."""
        return min(self.frames, (self.decoded_latents - 1) * family_class(self.family).temporal_scale + 1)

    def _check_memory_options(self) -> None:
        """Block swap and fp8 base weights act on whole weights on one process: not on FSDP-sharded ones."""
        if self.block_swap < 0:
            raise ValueError(f"block_swap must be 0 or more (the number of blocks kept on the CPU), got {self.block_swap}")
        if self.fsdp and (self.block_swap or self.fp8_base):
            option = "block_swap" if self.block_swap else "fp8_base"
            raise ValueError(f"{option} does not work on FSDP-sharded weights: turn off fsdp or {option}")

    def _check_guards(self) -> None:
        """The guards against reward hacking: each needs what it measures."""
        if self.judge:
            check_rewards(self.judge)
            if not self.validation_prompts:
                raise ValueError("judge: a judge scores the validation prompts; give validation_prompts")
        for name in ("patience", "diversity_seeds", "judge_drop", "drift_weight", "dynamism_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if (self.patience or self.judge_drop or self.diversity_seeds) and not self.judge:
            raise ValueError("patience, judge_drop and diversity_seeds act on the judge: choose a judge (a reward mix "
                             "not trained on) and validation_prompts")
        if self.judge_drop >= 1:
            raise ValueError(f"judge_drop is a fraction of the judge's best (0..1), got {self.judge_drop}")
        if self.diversity_seeds == 1:
            raise ValueError("diversity_seeds: the spread across seeds needs at least 2 seeds (0 turns it off)")
        if (self.drift_weight or self.dynamism_weight) and self.method != "reward_backprop":
            raise ValueError("drift_weight and dynamism_weight guard reward backpropagation; DPO's beta already holds "
                             "the model near its reference")
        decoded = self.decoded_frames()
        if self.dynamism_weight and decoded < 2:
            raise ValueError(f"dynamism_weight: motion needs 2 decoded frames or more; decoded_latents "
                             f"{self.decoded_latents} decodes {decoded}: decode 2 latents or more")

    def _check_sampling(self) -> None:
        """The loss, the video size, the steps that carry gradients and the prompts."""
        if self.loss_target is not None and self.loss != "target":
            raise ValueError(f"loss_target applies to loss 'target' only (loss is '{self.loss}'); remove it or set loss to 'target'")
        check_video(self)
        for name in ("weight_decay", "random_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        end = self.steps if self.random_end is None else self.random_end
        if not self.random_start < end <= self.steps:
            raise ValueError(f"random_start {self.random_start} and random_end {self.random_end} must give a non-empty "
                             f"range inside the {self.steps} sampling steps (0 <= random_start < random_end <= steps)")
        outside = [s for s in self.step_list if not 0 <= s < self.steps]
        if outside:
            raise ValueError(f"step_list {outside} lies outside the sampling steps 0..{self.steps - 1}")
        if self.strategy == "list" and not self.step_list:
            raise ValueError("strategy 'list' needs a step_list (indices of the sampling steps that carry gradients)")
        check_prompts(self, ("prompts", "validation_prompts"))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**settings_of(cls, data, "training")).validate()

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(read_settings(path))


def read_settings(path: Path) -> dict[str, Any]:
    """A job config file's JSON object."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of settings")
    return data


def settings_of(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` as the keyword arguments of the settings dataclass `cls` (unknown names refused, rewards parsed)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings: {', '.join(unknown)}")
    if "family" not in data or "model" not in data:
        raise ValueError(f"a {what} config needs 'family' and 'model'")
    data = dict(data)
    data["rewards"] = _choices(data.get("rewards", ["hps_v2.1"]))
    if "judge" in known:
        data["judge"] = _choices(data.get("judge", []))
    return data


def _choices(rewards: list[Any]) -> list[RewardChoice]:
    return [RewardChoice(**r) if isinstance(r, dict) else RewardChoice(r) for r in rewards]


def check_types(settings: Any) -> None:
    """Each plain setting of a settings dataclass holds a value of its kind (a typo such as "frames": "49" fails
    here, not at step 1)."""
    for spec in dataclasses.fields(settings):
        value, kind = getattr(settings, spec.name), str(spec.type)
        if kind.endswith(" | None"):
            if value is None:
                continue
            kind = kind.removesuffix(" | None")
        if kind in KINDS and not _is_kind(value, kind):
            raise ValueError(f"{spec.name} must be {KINDS[kind]}, got {value!r}")


def check_model(family: str, model: dict[str, str]) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; choose one of {', '.join(FAMILIES)}")
    needed = WAN_FILES if family == "wan2.2" else ("folder",)
    missing = [k for k in needed if not model.get(k)]
    if missing:
        raise ValueError(f"{family} needs the model files {', '.join(needed)}; missing: {', '.join(missing)}")


def check_rewards(rewards: list[RewardChoice]) -> None:
    if not rewards:
        raise ValueError("choose at least one reward")
    for choice in rewards:
        if choice.key not in REWARDS:
            raise ValueError(f"rewards: unknown reward '{choice.key}'; choose one of {', '.join(REWARDS)}")
        if isinstance(choice.weight, bool) or not isinstance(choice.weight, (int, float)) or not math.isfinite(choice.weight):
            raise ValueError(f"rewards: the weight of {choice.key} must be a finite number, got {choice.weight!r}")


def check_video(settings: Any) -> None:
    """The sampling settings a job shares with every job that samples: size, guidance, shift, device."""
    if settings.guidance < 1:
        raise ValueError(f"guidance must be at least 1 (1 = no classifier-free guidance), got {settings.guidance}")
    if not DEVICE.fullmatch(settings.device):
        raise ValueError(f"device '{settings.device}' is not one of auto, cpu, cuda, cuda:<index>")
    family_class(settings.family).check_size(settings.frames, settings.height, settings.width)
    if settings.shift is not None and settings.family != "wan2.2":
        raise ValueError(f"shift applies to Wan2.2 only ({settings.family} samples with its own scheduler); remove it")
    if settings.shift is not None and settings.shift <= 0:
        raise ValueError(f"shift must be positive (or null to follow the model), got {settings.shift}")


def check_prompts(settings: Any, names: tuple[str, ...]) -> None:
    for name in names:
        blank = [n for n, prompt in enumerate(getattr(settings, name), 1) if not prompt.strip()]
        if blank:
            raise ValueError(f"{name}: prompt {blank[0]} is empty; every prompt needs some text")


def _is_kind(value: Any, kind: str) -> bool:
    if kind.startswith("list["):
        return isinstance(value, list) and all(_is_kind(v, kind[5:-1]) for v in value)
    if kind == "float":
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if kind == "int":
        return not isinstance(value, bool) and isinstance(value, int)
    return isinstance(value, {"bool": bool, "str": str}[kind])


def read_prompts(path: Path) -> list[str]:
    """Prompts from a .txt file (one per line) or a .jsonl file (a "prompt" per line); blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, 1):
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'prompt' ({err})") from err
        lines = prompts
    if not lines:
        raise ValueError(f"{path} holds no prompts")
    return lines
