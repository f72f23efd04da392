"""Choosing preference pairs among the N scored samples of one prompt, and VideoDPO's α re-weighting of pairs by how
common their score gap is.

Re-weighting: the score gaps of all pairs are binned into `bins` equal-width bins spanning [smallest gap, largest gap]
(each bin closed on the left, the last one closed on both sides); a pair's `p` is the fraction of all pairs in its bin,
and its weight is dupfactor = (p_max / p)^α, where p_max is the largest bin fraction, so the most common gaps weigh 1
and rarer gaps more. `p` is what VideoDPO stores as a pair's `score` in pair.json, and the 0.72 its training code divides
by is p_max of its own dataset's histogram; here p_max is taken from the pairs themselves (the largest `p` among them,
which is the largest bin fraction, since every non-empty bin holds a pair)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PAIR_RULES = ("best_vs_worst", "all_pairs")
DEFAULT_BINS = 10


@dataclass(frozen=True)
class ScoredPair:
    """A winner and a loser (indices into one prompt's samples, or into a dataset's clips) and their score gap."""

    winner: int
    loser: int
    gap: float


def choose_pairs(scores: Sequence[float], rule: str = "best_vs_worst", min_gap: float = 0.0) -> list[ScoredPair]:
    """The pairs among one prompt's samples: "best_vs_worst" (the highest against the lowest score, the first sample
    of each on ties) or "all_pairs" (every ordered pair whose winner scores higher); either way only pairs whose gap
    exceeds `min_gap` are kept (so tied samples never pair)."""
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pairing rule '{rule}'; expected one of {', '.join(PAIR_RULES)}")
    if min_gap < 0:
        raise ValueError(f"the minimum score gap must be 0 or more, got {min_gap}")
    if len(scores) < 2:
        raise ValueError(f"pairing needs at least 2 scored samples per prompt, got {len(scores)}")
    if rule == "best_vs_worst":
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        worst = min(range(len(scores)), key=lambda i: (scores[i], i))
        candidates = [(best, worst)]
    else:
        candidates = [(i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] > scores[j]]
    pairs = [ScoredPair(w, l, scores[w] - scores[l]) for w, l in candidates]
    return [pair for pair in pairs if pair.gap > min_gap]


def gap_probabilities(gaps: Sequence[float], bins: int = DEFAULT_BINS) -> list[float]:
    """Each gap's bin fraction `p` in the histogram of all `gaps` (see the module's docstring)."""
    if bins < 1:
        raise ValueError(f"the gap histogram needs at least 1 bin, got {bins}")
    if not gaps:
        return []
    low, high = min(gaps), max(gaps)
    width = (high - low) / bins
    index = [0 if width == 0 else min(int((gap - low) / width), bins - 1) for gap in gaps]
    counts = [index.count(b) for b in range(bins)]
    return [counts[b] / len(gaps) for b in index]


def dupfactors(probabilities: Sequence[float], alpha: float) -> list[float]:
    """VideoDPO's per-pair weights (p_max / p)^α, with p_max the largest of `probabilities` (α = 0: all 1)."""
    if alpha < 0:
        raise ValueError(f"the re-weighting exponent alpha must be 0 or more, got {alpha}")
    if any(not 0 < p <= 1 for p in probabilities):
        raise ValueError(f"pair probabilities (pair.json 'score') must lie in (0, 1], got {sorted(probabilities)[:3]}...")
    p_max = max(probabilities, default=1.0)
    return [(p_max / p) ** alpha for p in probabilities]
