"""Building preference pairs as a job on tiny models: N videos per prompt sampled from seeds of their own, each scored
with the reward mix, paired best against worst, written in VideoDPO's layout with the latents; cancel and resume make
the same dataset; bad settings are refused before any model loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from video_reward_lora.reward.files import read_safetensors
from video_reward_lora.reward.seeds import seeded_generator
from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.build import load_family, load_reward_mix
from video_reward_lora.training.cli import main
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.jobs.jobs import Job, create_job, load_config
from video_reward_lora.training.jobs.runner import run_job
from video_reward_lora.training.preference.config import PairsConfig
from video_reward_lora.training.preference.dataset import read_dataset
from video_reward_lora.training.preference.video import read_mp4
from video_reward_lora.training.sampler import sample

PROMPTS = ["a red ball", "a blue sky", "a cat in a field"]
SIZE, FRAMES = 32, 9


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cogvideox": write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"),
            "rewards": write_reward_models(root / "reward_models", ("aesthetic_v2.5", "hps_v2.1"))}


def pairs_config(models: dict[str, Path], dataset: Path, **overrides) -> PairsConfig:
    settings = dict(family="cogvideox", model={"folder": str(models["cogvideox"])}, dataset=str(dataset),
                    rewards=[{"key": "aesthetic_v2.5"}], reward_roots=[str(models["rewards"])], prompts=PROMPTS,
                    videos_per_prompt=3, height=SIZE, width=SIZE, frames=FRAMES, steps=3, guidance=3.0)
    return PairsConfig.from_dict({**settings, **overrides})


@pytest.fixture(scope="module")
def built(models, tmp_path_factory) -> tuple[PairsConfig, Job]:
    root = tmp_path_factory.mktemp("built")
    config = pairs_config(models, root / "datasets" / "pairs")
    job = create_job(root / "jobs", config, Path(config.dataset))
    assert run_job(job.path) == "finished"
    return config, job


def test_pairs_are_the_best_and_worst_scored_videos_of_each_prompt(models, built):
    config, job = built
    status = job.status()
    assert status["state"] == "finished" and status["pairs"] == len(PROMPTS) and status["video"] == 9
    records = {r["clip"]: r for r in job.metrics()}
    assert sorted(records) == list(range(9))
    data = read_dataset(Path(config.dataset), family="cogvideox")
    assert len(data.clips) == 9 and [c.caption for c in data.clips] == [p for p in PROMPTS for _ in range(3)]
    for p, pair in enumerate(data.pairs):
        scores = [records[3 * p + n]["score"] for n in range(3)]
        assert (pair.winner, pair.loser) == (3 * p + scores.index(max(scores)), 3 * p + scores.index(min(scores)))
        assert pair.caption == PROMPTS[p] and pair.gap == pytest.approx(max(scores) - min(scores), abs=1e-12)
        assert pair.weight == 1.0  # alpha 0
    info = json.loads((Path(config.dataset) / "dataset.json").read_text())
    assert info["score"] == {"aesthetic_v2.5": 1.0} and info["family"] == "cogvideox" and info["frames"] == FRAMES
    assert not (job.path / "dataset").exists()  # moved into place, not copied


def test_each_video_is_its_seeds_sample_and_its_score_the_rewards(models, built):
    """Video n of prompt p is the sample from seeded_generator(seed, p, n); its stored latents are that sample exactly,
    and its recorded score the reward of its decoded frames recomputed here."""
    config, job = built
    family = load_family(config, torch.float32, torch.device("cpu"))
    reward = load_reward_mix(config.rewards, config.reward_roots, torch.float32, torch.device("cpu"))
    p, n = 2, 1
    with torch.no_grad():
        latents = sample(family, [PROMPTS[p]], "", FRAMES, SIZE, SIZE, config.steps, config.guidance, seeded_generator(config.seed, p, n))
        score = float(reward(family.decode(latents)[0], PROMPTS[p]).mean())
    stored, _ = read_safetensors(Path(config.dataset) / "latents" / "clips" / "000007.safetensors")
    assert torch.equal(stored["latents"], latents[0])
    record = next(r for r in job.metrics() if r["clip"] == 7)
    assert record["score"] == pytest.approx(score, rel=1e-6) and (record["prompt"], record["video"]) == (p, n)
    frames = read_mp4(Path(config.dataset) / "clips" / "000007.mp4")
    assert frames.shape == (FRAMES, 3, SIZE, SIZE)


def test_cancel_then_resume_makes_the_same_dataset(models, built, tmp_path, monkeypatch):
    config, uninterrupted = built
    resumed = pairs_config(models, tmp_path / "datasets" / "pairs")
    job = create_job(tmp_path / "jobs", resumed, Path(resumed.dataset))
    made = []
    original = Job.append_metrics

    def append_then_cancel(self, record):
        original(self, record)
        made.append(record)
        if len(made) == 4:
            self.request_cancel()

    monkeypatch.setattr(Job, "append_metrics", append_then_cancel)
    assert run_job(job.path) == "cancelled"
    status = job.status()
    assert status["state"] == "cancelled" and status["video"] == 4 and "resume continues" in status["reason"]
    assert not Path(resumed.dataset).exists() and len(list((job.path / "dataset" / "clips").iterdir())) == 4
    job.clear_cancel()
    assert run_job(job.path) == "finished" and len(made) == 9  # the 4 made videos were not made again
    for name in ("pair.json", "metadata.json"):
        assert json.loads((Path(resumed.dataset) / name).read_text()) == json.loads((Path(config.dataset) / name).read_text())
    for index in range(9):
        ours, _ = read_safetensors(Path(resumed.dataset) / "latents" / "clips" / f"{index:06d}.safetensors")
        theirs, _ = read_safetensors(Path(config.dataset) / "latents" / "clips" / f"{index:06d}.safetensors")
        assert torch.equal(ours["latents"], theirs["latents"])


def test_bad_pair_settings_are_refused_before_any_model_loads(models, tmp_path, capsys):
    good = json.loads(pairs_config(models, tmp_path / "d").to_json())
    cases = [({"videos_per_prompt": 1}, "videos_per_prompt must be at least 2"),
             ({"pair_rule": "random"}, "pair_rule 'random' is not one of best_vs_worst, all_pairs"),
             ({"min_gap": -1.0}, "min_gap must be 0 or more"), ({"prompts": []}, "give prompts"),
             ({"frames": 10}, "frames must be 4k\\+1"), ({"rewards": [{"key": "nope"}]}, "unknown reward 'nope'"),
             ({"seed": -1}, "seed"), ({"videos": 3}, "unknown preference-pair settings: videos")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            PairsConfig.from_dict({**good, **change})
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({**good, "videos_per_prompt": 1}))
    with pytest.raises(SystemExit):
        main(["run", "--config", str(path), "--output", str(tmp_path / "job")])
    assert "videos_per_prompt must be at least 2" in capsys.readouterr().err and not (tmp_path / "job").exists()
    path.write_text(json.dumps(good))
    assert isinstance(load_config(path), PairsConfig)


def test_an_existing_dataset_folder_is_never_overwritten(models, built, tmp_path):
    config, _ = built
    again = pairs_config(models, Path(config.dataset))
    job = create_job(tmp_path / "jobs", again, None)
    before = (Path(config.dataset) / "pair.json").read_bytes()
    assert run_job(job.path) == "failed"
    assert "exists already; choose another dataset name" in job.status()["reason"]
    assert (Path(config.dataset) / "pair.json").read_bytes() == before


def test_a_pair_job_whose_process_died_reads_as_failed_and_resumable(models, tmp_path):
    config = pairs_config(models, tmp_path / "d")
    job = create_job(tmp_path / "jobs", config, Path(config.dataset))
    job.set_status("running", "video 2/9", pid=2**22 + 12345)  # no such process
    status = job.status()
    assert status["state"] == "failed" and status["resumable"]
    assert status["reason"].endswith("resume continues from the videos not made yet")
