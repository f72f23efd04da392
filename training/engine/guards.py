"""Guards against reward hacking, for every method on the engine: a held-out judge (a reward mix never trained on,
scored on the validation prompts from fixed noise), early stopping on it with the best LoRA kept, and the spread of
the judge's image embeddings across seeds of one prompt (diversity).

Early stopping: after each evaluation the judge's score is compared with its best so far (the first evaluation, at
step 0, is the base model's). The run stops when the judge has not improved for `patience` evaluations, or when it
falls more than `judge_drop` × |best| below its best. The LoRA of the best evaluation is kept (`best/` in the job
folder) and is the job's result; the state of the watch goes into every checkpoint, so a resumed run stops where the
uninterrupted one stops.

Diversity (after VADER's diversity measure): for each validation prompt, `diversity_seeds` samples from their own
fixed noise; the first frame of each is embedded with the judge's first reward that has an image encoder; the score
is the mean over prompts of the mean pairwise cosine distance (1 − cos) between those embeddings: 0 when every seed
gives the same picture."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ...reward.composite import CompositeReward
from ...reward.seeds import seeded_generator
from ..families.base import VideoFamily
from ..sampler import sample_as

DIVERSITY_NOISE = 5  # (DIVERSITY_NOISE, prompt, seed): the noise of a diversity sample, under the config's seed


@dataclass
class JudgeWatch:
    """The early-stopping state: the judge's best score and step, and evaluations since it improved."""

    patience: int = 0
    drop: float = 0.0
    best: float | None = None
    best_step: int = 0
    since_best: int = 0

    def update(self, step: int, score: float) -> tuple[bool, str]:
        """Record the judge's score at `step`: (whether it is the best so far, why to stop now or "")."""
        if self.best is None or score > self.best:
            self.best, self.best_step, self.since_best = score, step, 0
            return True, ""
        self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            return False, (f"the judge has not improved for {self.since_best} evaluations (best {self.best:.5g} at step "
                           f"{self.best_step})")
        if self.drop and self.best - score > self.drop * abs(self.best):
            return False, (f"the judge fell to {score:.5g}, more than {self.drop:g} of its best {self.best:.5g} (step "
                           f"{self.best_step}) below it")
        return False, ""

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any], patience: int, drop: float) -> "JudgeWatch":
        """A watch resumed from a checkpoint's state, with the config's patience and drop."""
        return cls(patience, drop, state.get("best"), state.get("best_step", 0), state.get("since_best", 0))


def embedder(judge: CompositeReward) -> torch.nn.Module | None:
    """The judge's first reward that embeds images (`embeds`), if any."""
    return next((term.model for term in judge.terms if getattr(term.model, "embeds", False)), None)


@torch.no_grad()
def diversity(family: VideoFamily, model: torch.nn.Module, prompts: Sequence[str], settings: Any, seed: int,
              seeds: int) -> float:
    """The mean over `prompts` of the mean pairwise cosine distance between `seeds` samples' first-frame embeddings."""
    spreads = []
    for index, prompt in enumerate(prompts):
        firsts = [sample_first_frame(family, prompt, settings, seeded_generator(seed, DIVERSITY_NOISE, index, k))
                  for k in range(seeds)]
        embeddings = F.normalize(model.embed_frames(torch.cat(firsts)).float(), dim=-1)
        cosine = embeddings @ embeddings.T
        pairs = seeds * (seeds - 1)
        spreads.append(float((1 - cosine).sum() / pairs))
    return sum(spreads) / len(spreads)


def sample_first_frame(family: VideoFamily, prompt: str, settings: Any, generator: torch.Generator) -> torch.Tensor:
    """The first frame `[1,3,H,W]` of a sample of `prompt` (only the first latent decoded)."""
    latents = sample_as(family, [prompt], settings, generator)
    return family.decode(latents, first_n=1)[0, :1].float()
