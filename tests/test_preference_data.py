"""Preference pairs and the VideoDPO-layout dataset: choosing and weighting pairs, writing and reading it back, reading
a folder made as VideoDPO's, and refusing bad datasets with nothing written."""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from video_reward_lora.training.preference.dataset import (
    DatasetInfo, NewClip, PreferenceDataError, read_dataset, write_dataset,
)
from video_reward_lora.training.preference.pairs import ScoredPair, choose_pairs, dupfactors, gap_probabilities
from video_reward_lora.training.preference.video import ClipFormat, read_mp4

INFO = DatasetInfo(family="wan2.2_t2v", frames=5, height=16, width=32, fps=8.0, score={"hps_v2.1": 1.0, "pickscore": 0.5},
                   alpha=1.0)
CAPTIONS = ["a red fox", "a red fox", "a blue boat", "a blue boat"]
PAIRS = [ScoredPair(0, 1, 0.5), ScoredPair(2, 3, 0.25), ScoredPair(2, 1, 0.75)]


def _frames(shift: float, frames: int = 5, height: int = 16, width: int = 32) -> torch.Tensor:
    """A smooth moving gradient [F,3,H,W] in 0..1 (which H.264 keeps closely)."""
    t = torch.arange(frames).view(-1, 1, 1, 1) / frames
    y = torch.linspace(0, 1, height).view(1, 1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, 1, -1)
    channel = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
    return (0.25 + 0.5 * (0.5 * x + 0.3 * y + 0.2 * t + channel * shift) % 1).expand(frames, 3, height, width).contiguous()


def _clips() -> list[NewClip]:
    generator = torch.Generator().manual_seed(0)
    return [NewClip(_frames(i / 4), caption, torch.randn(4, 2, 2, 4, generator=generator)) for i, caption in enumerate(CAPTIONS)]


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[NewClip]]:
    clips = _clips()
    folder = tmp_path_factory.mktemp("datasets") / "foxes"
    write_dataset(folder, INFO, clips, PAIRS, bins=2)
    return folder, clips


def test_choose_pairs_from_a_score_table():
    scores = [0.25, 1.0, 0.5, 1.0, 0.125]
    assert choose_pairs(scores) == [ScoredPair(1, 4, 0.875)]  # the first best against the worst
    assert choose_pairs(scores, min_gap=0.875) == []  # the gap must exceed the minimum
    above = choose_pairs(scores, "all_pairs", min_gap=0.3)
    assert {(p.winner, p.loser) for p in above} == {(1, 0), (1, 2), (1, 4), (3, 0), (3, 2), (3, 4), (2, 4)}
    assert {(p.winner, p.loser): p.gap for p in above}[(2, 4)] == 0.375
    assert all(p.gap == scores[p.winner] - scores[p.loser] for p in above)
    assert len(choose_pairs(scores, "all_pairs")) == 9  # every ordered pair with a higher winner; the tie (1, 3) never
    assert choose_pairs([0.5, 0.5, 0.5]) == []
    with pytest.raises(ValueError, match="unknown pairing rule 'random'"):
        choose_pairs(scores, "random")
    with pytest.raises(ValueError, match="at least 2 scored samples"):
        choose_pairs([1.0])


def test_dupfactors_from_the_gap_histogram():
    gaps = [0.1, 0.15, 0.2, 0.22, 0.5, 0.9, 1.0]
    # by hand: 3 bins of width 0.3 from 0.1: four gaps in the first, one in the second, two in the last
    probabilities = gap_probabilities(gaps, bins=3)
    assert probabilities == pytest.approx([4 / 7] * 4 + [1 / 7] + [2 / 7] * 2, abs=1e-12)
    assert dupfactors(probabilities, alpha=0.5) == pytest.approx([1.0] * 4 + [2.0] + [2 ** 0.5] * 2, abs=1e-12)
    # independently, with numpy's histogram (same binning: equal widths over the range, the last bin closed)
    counts, edges = np.histogram(gaps, bins=3)
    bin_of = [min(int(np.searchsorted(edges, g, side="right")) - 1, 2) for g in gaps]
    expected_p = [counts[b] / len(gaps) for b in bin_of]
    assert dupfactors(probabilities, alpha=1.5) == pytest.approx([(max(expected_p) / p) ** 1.5 for p in expected_p], abs=1e-12)
    assert dupfactors(probabilities, alpha=0.0) == [1.0] * 7
    assert dupfactors([0.72, 0.36, 0.18], alpha=1.0) == pytest.approx([1.0, 2.0, 4.0])  # VideoDPO's p_max of 0.72
    assert gap_probabilities([0.3, 0.3]) == [1.0, 1.0]


def test_written_dataset_reads_back_the_same(written):
    folder, clips = written
    dataset = read_dataset(folder, family=INFO.family, clip_format=ClipFormat(5, 16, 32))
    assert dataset.info == INFO
    assert [(p.winner, p.loser) for p in dataset.pairs] == [(0, 1), (2, 3), (2, 1)]
    assert [p.caption for p in dataset.pairs] == ["a red fox", "a blue boat", "a blue boat"]
    assert [p.gap for p in dataset.pairs] == [0.5, 0.25, 0.75]
    # 2 bins over gaps 0.25..0.75: {0.25} and {0.5, 0.75}: p = 2/3, 1/3, 2/3; α = 1: weights 1, 2, 1
    assert [p.weight for p in dataset.pairs] == pytest.approx([1.0, 2.0, 1.0], abs=1e-12)
    assert [p.weight for p in read_dataset(folder, alpha=0.0).pairs] == [1.0, 1.0, 1.0]
    assert [c.caption for c in dataset.clips] == CAPTIONS
    assert [c.duration for c in dataset.clips] == [5 / 8] * 4
    with pytest.raises(PreferenceDataError, match="foxes already exists"):
        write_dataset(folder, INFO, clips, PAIRS)
    assert dataset.needs_encoding == []
    for index, clip in enumerate(clips):
        assert torch.equal(dataset.latents(index), clip.latents)
        decoded = read_mp4(dataset.clips[index].path)
        assert decoded.shape == (5, 3, 16, 32)
        assert (decoded - clip.frames).abs().mean().item() < 0.03
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata[0]["basic"]["clip_path"] == "clips/000000.mp4" and metadata[0]["misc"]["frame_caption"] == ["a red fox"]
    assert json.loads((folder / "pair.json").read_text())[1] == {
        "video1": 2, "video2": 3, "frame_caption": "a blue boat", "score": 1 / 3, "gap": 0.25}


def _write_videodpo_clip(path: Path, frames: torch.Tensor, fps: int = 8) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[-1], frames.shape[-2], "yuv420p"
        for image in (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_a_videodpo_folder_reads_and_lists_clips_to_encode(tmp_path):
    names = ["videos/snake_0.mp4", "videos/snake_1.mp4", "videos/dog_0.mp4"]
    for i, name in enumerate(names):
        _write_videodpo_clip(tmp_path / name, _frames(i / 3, frames=4, height=16, width=16))
    (tmp_path / "metadata.json").write_text(json.dumps([
        {"basic": {"clip_path": name, "clip_duration": 0.5}, "misc": {"frame_caption": [name.split("/")[1][:-6]]}}
        for name in names]))
    (tmp_path / "pair.json").write_text(json.dumps([
        {"video1": 1, "video2": 0, "frame_caption": "snake", "score": 0.72},
        {"video1": 2, "video2": 0, "frame_caption": "dog", "score": 0.36}]))
    dataset = read_dataset(tmp_path, family="cogvideox_fun")
    assert dataset.info is None
    assert dataset.needs_encoding == [tmp_path / name for name in names]
    assert [(p.winner, p.loser, p.caption, p.gap) for p in dataset.pairs] == [(1, 0, "snake", None), (2, 0, "dog", None)]
    assert [p.weight for p in dataset.pairs] == [1.0, 1.0]  # α 0 by default, as VideoDPO ships
    assert [p.weight for p in read_dataset(tmp_path, alpha=1.0).pairs] == pytest.approx([1.0, 2.0])
    with pytest.raises(PreferenceDataError, match="snake_0.mp4 has 4 frames of 16x16; the training says 5 frames of 16x16"):
        read_dataset(tmp_path, clip_format=ClipFormat(5, 16, 16))
    with pytest.raises(PreferenceDataError, match="has no latents yet"):
        dataset.latents(0)


def test_bad_datasets_are_refused_before_writing(tmp_path):
    clips = _clips()
    cases = [
        (clips[:1], PAIRS[:1], "needs at least 2 videos, it has 1"),
        (clips, [], "the dataset has no pairs"),
        (clips, [ScoredPair(0, 4, 0.5)], r"pair 0 has video2 = 4, outside the 4 videos of metadata.json \(0..3\)"),
        (clips, [ScoredPair(1, 1, 0.0)], "pairs video 1 with itself"),
        ([*clips[:3], NewClip(_frames(0, height=32), "tall")], PAIRS, r"clip 3 is \(5, 3, 32, 32\)"),
        ([*clips[:3], NewClip(clips[3].frames, "no latents")], PAIRS, "latents must all be given"),
    ]
    for bad_clips, bad_pairs, message in cases:
        with pytest.raises(PreferenceDataError, match=message):
            write_dataset(tmp_path / "bad", INFO, bad_clips, bad_pairs)
        assert list(tmp_path.iterdir()) == []


def _mutated(written, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(written[0], folder)
    edit(folder)
    return folder


def _edit_json(name: str, change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize("edit, asked, message", [
    (_edit_json("metadata.json", lambda d: d.clear()), {}, "metadata.json: a preference dataset needs at least 2 videos, it has 0"),
    (_edit_json("metadata.json", lambda d: d.__delitem__(slice(1, None))), {}, "needs at least 2 videos, it has 1"),
    (_edit_json("pair.json", lambda d: d[1].update(video2=9)), {}, r"pair.json: pair 1 has video2 = 9, outside the 4 videos"),
    (_edit_json("pair.json", lambda d: d[0].update(video1="0")), {}, r"pair.json: pair 0 needs 'video1' of type int"),
    (_edit_json("metadata.json", lambda d: d[2]["basic"].pop("clip_path")), {}, "metadata.json: clip 2 'basic' needs 'clip_path'"),
    (_edit_json("metadata.json", lambda d: d[2]["basic"].update(clip_path="../x.mp4")), {}, r"clip 2 basic.clip_path: .*'\.\.'"),
    (lambda f: _write_videodpo_clip(f / "clips/000002.mp4", _frames(0, height=16, width=16)), {},
     r"000002.mp4 has 5 frames of 16x16; .*dataset.json says 5 frames of 32x16"),
    (lambda f: _write_videodpo_clip(f / "clips/000001.mp4", _frames(0, frames=3)), {},
     r"000001.mp4 has 3 frames of 32x16; .*dataset.json says 5 frames of 32x16"),
    (lambda f: None, {"clip_format": ClipFormat(9, 16, 32)}, r"dataset.json: the dataset's clips are 5 frames of 32x16; the training takes 9"),
    (lambda f: None, {"family": "cogvideox_fun"}, "dataset.json: the dataset was made with wan2.2_t2v; it cannot train cogvideox_fun"),
])
def test_bad_datasets_are_refused_on_reading(written, tmp_path, edit, asked, message):
    folder = _mutated(written, tmp_path, edit)
    before = _listing(folder)
    with pytest.raises(PreferenceDataError, match=message):
        read_dataset(folder, **asked)
    assert _listing(folder) == before
