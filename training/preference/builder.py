"""Building a preference dataset as a job (VideoDPO's pipeline): sample N videos per prompt with the loaded family,
score each with the reward mix, pair them, and write the dataset in VideoDPO's layout with our latents.

Video `n` of prompt `p` is sampled from the noise of `seeded_generator(seed, p, n)` alone, so a job stopped part-way
and resumed makes exactly the videos an uninterrupted job makes. Each finished video goes into the job folder's
`dataset/` at once (its mp4 and latents) and its scores into `metrics.jsonl`; a resumed job skips the videos recorded
there. When all are made, the pairs are chosen per prompt and the folder moves to the dataset's place whole."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ...reward.files import atomic_folder
from ...reward.plot import save_frames
from ...reward.seeds import seeded_generator
from ..build import load_family, load_reward_mix
from ..scored import scored_sample
from .config import PairsConfig
from .dataset import DatasetInfo, NewClip, PreferenceDataError, clip_path, write_clip, write_index
from .pairs import ScoredPair, choose_pairs

WORK_FOLDER = "dataset"  # in the job folder: the dataset as it grows
SAMPLE_FRAMES = 4  # evenly spaced frames of the latest video, shown by Training Status


class Cancelled(Exception):
    """A cancel request arrived while a video was being sampled (the partial video is dropped)."""


def video_index(prompt: int, video: int, per_prompt: int) -> int:
    """The clip index of video `video` of prompt `prompt` in the dataset."""
    return prompt * per_prompt + video


def made_videos(job: Any) -> dict[int, dict[str, Any]]:
    """The videos a job has finished, by clip index: each one's metrics record, when its files are in place."""
    folder = job.path / WORK_FOLDER
    records = {}
    for record in job.metrics():
        if "score" in record and (folder / clip_path(record["clip"])).is_file():
            records[record["clip"]] = record
    return records


def dataset_info(config: PairsConfig, fps: float) -> DatasetInfo:
    score = {choice.key: float(choice.weight) for choice in config.rewards}
    return DatasetInfo(config.family, config.frames, config.height, config.width, fps, score, config.alpha)


def build_pairs(job: Any, config: PairsConfig, dtype: torch.dtype, device: torch.device,
                cancelled: Callable[[], bool]) -> str:
    """Make the job's missing videos, then pair them and put the dataset in place; returns "finished" or
    "cancelled" (the videos made so far stay for a resume)."""
    prompts = config.prompt_list()
    destination = Path(config.dataset)
    if destination.exists():
        raise PreferenceDataError(f"{destination} exists already; choose another dataset name")
    per_prompt, total = config.videos_per_prompt, len(prompts) * config.videos_per_prompt
    made = made_videos(job)
    job.set_status("running", "loading the models", video=len(made), videos=total)
    family = load_family(config, dtype, device)
    reward = load_reward_mix(config.rewards, config.reward_roots, dtype, device)
    family.encode(list(dict.fromkeys([*prompts, config.negative_prompt])))
    family.release_text_encoders()
    info = dataset_info(config, family.fps)
    for p, prompt in enumerate(prompts):
        for n in range(per_prompt):
            index = video_index(p, n, per_prompt)
            if index in made:
                continue
            try:
                if cancelled():
                    raise Cancelled
                made[index] = _make_video(job, config, family, reward, info, prompt, p, n, len(made), total, cancelled)
            except Cancelled:
                job.set_status("cancelled", f"cancelled after {len(made)} of {total} videos; resume continues from there",
                               video=len(made), videos=total, resumable=True)
                return "cancelled"
    pairs = []
    for p in range(len(prompts)):
        indices = [video_index(p, n, per_prompt) for n in range(per_prompt)]
        for pair in choose_pairs([made[i]["score"] for i in indices], config.pair_rule, config.min_gap):
            pairs.append(ScoredPair(indices[pair.winner], indices[pair.loser], pair.gap))
    if not pairs:
        raise PreferenceDataError(f"no pair of videos has a score gap above min_gap {config.min_gap:g}; lower it or make "
                                  "more videos per prompt")
    captions = [prompts[i // per_prompt] for i in range(total)]
    write_index(job.path / WORK_FOLDER, info, captions, pairs, config.bins)
    publish(job.path / WORK_FOLDER, destination)
    job.set_status("finished", f"{len(pairs)} pairs from {total} videos", video=total, videos=total, pairs=len(pairs),
                   dataset=str(destination))
    return "finished"


def _make_video(job: Any, config: PairsConfig, family: Any, reward: Any, info: DatasetInfo, prompt: str, p: int, n: int,
                done: int, total: int, cancelled: Callable[[], bool]) -> dict[str, Any]:
    """Sample, decode and score video `n` of prompt `p`; write it into the job's dataset folder and record its scores."""
    def progress(step: int, steps: int) -> None:
        if cancelled():
            raise Cancelled
        job.set_status("running", f"video {done + 1}/{total}, step {step}/{steps}", video=done, videos=total)

    index = video_index(p, n, config.videos_per_prompt)
    made = scored_sample(family, reward, prompt, config, seeded_generator(config.seed, p, n), progress)
    write_clip(job.path / WORK_FOLDER, index, NewClip(made.frames.cpu(), prompt, made.latents.float().cpu()), info)
    record = {"clip": index, "prompt": p, "video": n, "score": made.score,
              "scores": {term.model.label: float(r.mean()) for term, r in zip(reward.terms, made.raw)}}
    job.append_metrics(record)
    shown = torch.linspace(0, len(made.frames) - 1, min(SAMPLE_FRAMES, len(made.frames))).round().long()
    save_frames(made.frames[shown], job.samples / "latest.png",
                [f"video {n + 1} of '{prompt}', score {made.score:.4g}" if i == 0 else f"frame {int(f) + 1}"
                 for i, f in enumerate(shown)], columns=len(shown))
    job.set_status("running", f"video {done + 1}/{total} made (score {made.score:.4g})", video=done + 1, videos=total)
    return record


def publish(source: Path, destination: Path) -> None:
    """Put the finished dataset folder in place: renamed on one filesystem; across filesystems copied beside
    `destination` first (all or nothing), then the job's copy removed."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, destination)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with atomic_folder(destination) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        shutil.rmtree(source)
