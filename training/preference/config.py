"""The settings of a preference-pair job: which model samples, how many videos per prompt, how they are scored and
paired, and where the dataset goes."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...reward.seeds import check_seed
from ..config import (
    PRECISIONS, RewardChoice, check_model, check_prompts, check_rewards, check_types, check_video, read_prompts,
    read_settings, settings_of,
)
from .pairs import PAIR_RULES

KIND = "preference_pairs"


@dataclass
class PairsConfig:
    """Sample `videos_per_prompt` videos per prompt (seed, prompt index, video index give each one's noise), score each
    with the mean over its frames of the reward mix, pair them by `pair_rule` and write the dataset to `dataset`."""

    # Settings that only change how the finished videos are paired: a job stopped with other values of these reuses
    # every video it made.
    resumable: ClassVar[tuple[str, ...]] = ("pair_rule", "min_gap", "alpha", "bins")

    family: str
    model: dict[str, str]
    dataset: str  # the dataset folder to write (it must not exist yet)
    kind: str = KIND
    rewards: list[RewardChoice] = field(default_factory=lambda: [RewardChoice("hps_v2.1")])
    reward_roots: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    prompts_file: str = ""
    negative_prompt: str = ""
    videos_per_prompt: int = 4
    pair_rule: str = "best_vs_worst"
    min_gap: float = 0.0
    alpha: float = 0.0  # VideoDPO's re-weighting exponent, stored with the dataset (its shipped config: 0)
    bins: int = 10  # bins of the score-gap histogram the re-weighting reads
    height: int = 256
    width: int = 256
    frames: int = 49
    steps: int = 50
    guidance: float = 6.0
    shift: float | None = None  # Wan2.2's sampling shift; None: the experts' official value
    offload_idle_expert: bool = True
    seed: int = 42
    precision: str = "auto"
    device: str = "auto"

    def validate(self) -> "PairsConfig":
        """Raise ValueError naming the first setting that cannot work; nothing is loaded."""
        check_types(self)
        if self.kind != KIND:
            raise ValueError(f"kind must be '{KIND}' for a preference-pair job, got '{self.kind}'")
        check_model(self.family, self.model)
        check_rewards(self.rewards)
        if not self.dataset:
            raise ValueError("dataset: name the folder the preference dataset is written to")
        if not self.prompts and not self.prompts_file:
            raise ValueError("give prompts (a list, or a .txt / .jsonl prompts file)")
        if self.videos_per_prompt < 2:
            raise ValueError(f"videos_per_prompt must be at least 2 (a pair needs two videos), got {self.videos_per_prompt}")
        if self.pair_rule not in PAIR_RULES:
            raise ValueError(f"pair_rule '{self.pair_rule}' is not one of {', '.join(PAIR_RULES)}")
        for name in ("min_gap", "alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("bins", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        check_video(self)
        check_prompts(self, ("prompts",))
        check_seed(self.seed)
        return self

    def prompt_list(self) -> list[str]:
        return self.prompts or read_prompts(Path(self.prompts_file))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PairsConfig":
        if "dataset" not in data:
            raise ValueError("a preference-pair config needs 'dataset' (the folder to write)")
        return cls(**settings_of(cls, data, "preference-pair")).validate()

    @classmethod
    def load(cls, path: Path) -> "PairsConfig":
        return cls.from_dict(read_settings(path))
