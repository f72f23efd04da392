"""A preference dataset on disk, in VideoDPO's layout plus our latents, written and read with validation.

    metadata.json   [{"basic": {"clip_path": "clips/0000.mp4", "clip_duration": 2.0}, "misc": {"frame_caption": [caption]}}, ...]
    pair.json       [{"video1": winner index, "video2": loser index, "frame_caption": caption, "score": p, "gap": g}, ...]
    clips/*.mp4     the videos (clip_path is relative to the dataset folder)
    latents/<clip_path stem>.safetensors   our latents of each clip ("latents": [C,T,H,W]), optional on read
    dataset.json    ours: the family, frame count and size, fps, score composition and α; absent in VideoDPO's folders

`score` is the pair's gap-histogram probability p, as VideoDPO's training reads it; a pair's weight is
(p_max / p)^α (training.preference.pairs)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import torch

from ...reward.files import (
    ModelFileError, atomic_folder, check_relative, read_safetensors, safetensors_header, write_json_atomic,
    write_safetensors_atomic,
)
from .pairs import DEFAULT_BINS, ScoredPair, dupfactors, gap_probabilities
from .video import ClipError, ClipFormat, probe_mp4, write_mp4

DATASET_FILE = "dataset.json"
METADATA_FILE = "metadata.json"
PAIRS_FILE = "pair.json"
CLIPS_FOLDER = "clips"
LATENTS_FOLDER = "latents"
LATENTS_KEY = "latents"


class PreferenceDataError(ValueError):
    """A preference dataset is malformed, or does not fit what it is used for."""


@dataclass
class DatasetInfo:
    """What our dataset.json records: the family the clips were made with, their format, and how pairs were scored."""

    family: str
    frames: int
    height: int
    width: int
    fps: float
    score: dict[str, float] = field(default_factory=dict)  # the composite score's rewards and their weights
    alpha: float = 0.0  # VideoDPO's re-weighting exponent (its shipped config: 0, all weights 1)

    @property
    def clip_format(self) -> ClipFormat:
        return ClipFormat(self.frames, self.height, self.width)


@dataclass
class NewClip:
    """A clip to write: its frames [F,3,H,W] in 0..1, its prompt, and its latents [C,T,H,W] when kept."""

    frames: torch.Tensor
    caption: str
    latents: torch.Tensor | None = None


@dataclass
class ClipEntry:
    """A clip of a dataset read back: its file, prompt, duration, and its latents file (None: needs encoding)."""

    path: Path
    caption: str
    duration: float | None
    latents: Path | None


@dataclass
class PreferencePair:
    """A winner and a loser (indices into the clips), the prompt, the gap probability p, score gap and weight."""

    winner: int
    loser: int
    caption: str
    probability: float
    gap: float | None
    weight: float


@dataclass
class PreferenceDataset:
    """A dataset read back and validated."""

    folder: Path
    info: DatasetInfo | None
    clips: list[ClipEntry]
    pairs: list[PreferencePair]

    @property
    def needs_encoding(self) -> list[Path]:
        """The clips without latents (to encode with the family's VAE before training)."""
        return [clip.path for clip in self.clips if clip.latents is None]

    def latents(self, index: int) -> torch.Tensor:
        """The stored latents [C,T,H,W] of clip `index`."""
        path = self.clips[index].latents
        if path is None:
            raise PreferenceDataError(f"{self.clips[index].path} has no latents yet; encode it first")
        tensors, _ = read_safetensors(path)
        if LATENTS_KEY not in tensors:
            raise PreferenceDataError(f"{path} holds no '{LATENTS_KEY}' tensor (found {', '.join(tensors) or 'none'})")
        return tensors[LATENTS_KEY]


def _latents_path(folder: Path, clip_path: str) -> Path:
    return folder / LATENTS_FOLDER / PurePosixPath(clip_path).with_suffix(".safetensors")


def _check_clips_and_pairs(folder: Path, clip_count: int, pairs: Sequence[tuple[int, int]], pairs_name: str) -> None:
    if clip_count < 2:
        raise PreferenceDataError(f"{folder / METADATA_FILE}: a preference dataset needs at least 2 videos, it has {clip_count}")
    if not pairs:
        raise PreferenceDataError(f"{folder / pairs_name}: the dataset has no pairs")
    for position, (winner, loser) in enumerate(pairs):
        for key, index in (("video1", winner), ("video2", loser)):
            if not 0 <= index < clip_count:
                raise PreferenceDataError(f"{folder / pairs_name}: pair {position} has {key} = {index}, outside the "
                                          f"{clip_count} videos of {METADATA_FILE} (0..{clip_count - 1})")
        if winner == loser:
            raise PreferenceDataError(f"{folder / pairs_name}: pair {position} pairs video {winner} with itself")


def write_dataset(folder: Path, info: DatasetInfo, clips: Sequence[NewClip], pairs: Sequence[ScoredPair],
                  bins: int = DEFAULT_BINS, overwrite: bool = False) -> None:
    """Write a whole dataset into `folder` (all of it or nothing: it is staged beside `folder` and renamed into place);
    `pairs` index `clips`."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise PreferenceDataError(f"{folder} already exists; choose another dataset name or allow overwriting")
    _check_clips_and_pairs(folder, len(clips), [(p.winner, p.loser) for p in pairs], PAIRS_FILE)
    if not info.fps > 0:
        raise PreferenceDataError(f"the dataset's fps must be positive, got {info.fps}")
    latent_shapes = {tuple(c.latents.shape) for c in clips if c.latents is not None}
    for index, clip in enumerate(clips):
        if tuple(clip.frames.shape) != (info.frames, 3, info.height, info.width):
            raise PreferenceDataError(f"clip {index} is {tuple(clip.frames.shape)}; the dataset's clips are "
                                      f"[{info.frames},3,{info.height},{info.width}] (frames, channels, height, width)")
    if len(latent_shapes) > 1 or (latent_shapes and any(c.latents is None for c in clips)):
        raise PreferenceDataError(f"the clips' latents must all be given, of one shape; got shapes {sorted(latent_shapes)}"
                                  f" and {sum(c.latents is None for c in clips)} clips without")
    with atomic_folder(folder) as staging:
        for index, clip in enumerate(clips):
            write_clip(staging, index, clip, info)
        write_index(staging, info, [clip.caption for clip in clips], pairs, bins)


def clip_path(index: int) -> str:
    """Where clip `index` of a dataset we write lies, relative to the dataset folder."""
    return f"{CLIPS_FOLDER}/{index:06d}.mp4"


def write_clip(folder: Path, index: int, clip: NewClip, info: DatasetInfo) -> None:
    """Clip `index` of a dataset in `folder`: its mp4, and its latents when given (each file atomically)."""
    write_mp4(folder / clip_path(index), clip.frames, info.fps)
    if clip.latents is not None:
        write_safetensors_atomic({LATENTS_KEY: clip.latents.detach().cpu()}, _latents_path(folder, clip_path(index)),
                                 {"family": info.family})


def write_index(folder: Path, info: DatasetInfo, captions: Sequence[str], pairs: Sequence[ScoredPair],
                bins: int = DEFAULT_BINS) -> None:
    """metadata.json, pair.json and dataset.json of the clips `write_clip` wrote into `folder` (one caption each)."""
    _check_clips_and_pairs(folder, len(captions), [(p.winner, p.loser) for p in pairs], PAIRS_FILE)
    probabilities = gap_probabilities([p.gap for p in pairs], bins)
    metadata = [{"basic": {"clip_path": clip_path(index), "clip_duration": info.frames / info.fps},
                 "misc": {"frame_caption": [caption]}} for index, caption in enumerate(captions)]
    entries = [{"video1": pair.winner, "video2": pair.loser, "frame_caption": captions[pair.winner], "score": probability,
                "gap": pair.gap} for pair, probability in zip(pairs, probabilities)]
    latents = _latents_path(folder, clip_path(0))
    shape = list(safetensors_header(latents)[0][LATENTS_KEY]["shape"]) if latents.is_file() else []
    write_json_atomic(folder / METADATA_FILE, metadata)
    write_json_atomic(folder / PAIRS_FILE, entries)
    write_json_atomic(folder / DATASET_FILE, {**asdict(info), "latent_shape": shape})


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise PreferenceDataError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PreferenceDataError(f"{path} is not readable JSON: {err}") from err


def _field(path: Path, where: str, entry: Any, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """`entry[key]`, checked to be of `kind`; `default` when absent (required when no default)."""
    if not isinstance(entry, dict):
        raise PreferenceDataError(f"{path}: {where} is not an object")
    if key not in entry and default is not ...:
        return default
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise PreferenceDataError(f"{path}: {where} needs '{key}' of type {names}, got {value!r:.80}")
    return value


def _read_info(folder: Path) -> tuple[DatasetInfo | None, list[int]]:
    path = folder / DATASET_FILE
    if not path.exists():
        return None, []
    data = _load_json(path)
    number = (int, float)
    info = DatasetInfo(
        family=_field(path, "the dataset", data, "family", str), frames=_field(path, "the dataset", data, "frames", int),
        height=_field(path, "the dataset", data, "height", int), width=_field(path, "the dataset", data, "width", int),
        fps=float(_field(path, "the dataset", data, "fps", number)), score=_field(path, "the dataset", data, "score", dict, {}),
        alpha=float(_field(path, "the dataset", data, "alpha", number, 0.0)),
    )
    return info, list(_field(path, "the dataset", data, "latent_shape", list, []))


def _read_clips(folder: Path, family: str | None, latent_shape: list[int]) -> list[ClipEntry]:
    path = folder / METADATA_FILE
    metadata = _load_json(path)
    if not isinstance(metadata, list):
        raise PreferenceDataError(f"{path} must hold a list of clips, found {type(metadata).__name__}")
    clips = []
    for index, entry in enumerate(metadata):
        where = f"clip {index}"
        basic = _field(path, where, entry, "basic", dict)
        clip_path = _field(path, f"{where} 'basic'", basic, "clip_path", str)
        try:
            check_relative(clip_path, str(folder))
        except ModelFileError as err:
            raise PreferenceDataError(f"{path}: {where} basic.clip_path: {err}") from err
        if not (folder / clip_path).is_file():
            raise PreferenceDataError(f"{path}: {where} basic.clip_path names {clip_path}, which is not in {folder}")
        duration = _field(path, f"{where} 'basic'", basic, "clip_duration", (int, float), None)
        captions = _field(path, f"{where} 'misc'", _field(path, where, entry, "misc", dict, {}), "frame_caption", (list, str), "")
        caption = captions if isinstance(captions, str) else str(captions[0]) if captions else ""
        latents = _latents_path(folder, clip_path)
        clips.append(ClipEntry(folder / clip_path, caption, duration, latents if latents.is_file() else None))
        if latents.is_file():
            _check_latents(latents, family, latent_shape)
    return clips


def _check_latents(path: Path, family: str | None, latent_shape: list[int]) -> None:
    try:
        header, _ = safetensors_header(path)
    except ModelFileError as err:
        raise PreferenceDataError(str(err)) from err
    made_with = header.get("__metadata__", {}).get("family")
    if family and made_with and made_with != family:
        raise PreferenceDataError(f"{path} holds latents of {made_with}, not {family}")
    entry = header.get(LATENTS_KEY)
    if entry is None:
        raise PreferenceDataError(f"{path} holds no '{LATENTS_KEY}' tensor")
    if latent_shape and list(entry["shape"]) != latent_shape:
        raise PreferenceDataError(f"{path} holds latents of shape {entry['shape']}; the dataset's are {latent_shape}")


def _read_pairs(folder: Path, clips: list[ClipEntry], alpha: float) -> list[PreferencePair]:
    path = folder / PAIRS_FILE
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise PreferenceDataError(f"{path} must hold a list of pairs, found {type(entries).__name__}")
    indices = [(_field(path, f"pair {i}", e, "video1", int), _field(path, f"pair {i}", e, "video2", int))
               for i, e in enumerate(entries)]
    _check_clips_and_pairs(folder, len(clips), indices, PAIRS_FILE)
    probabilities = [float(_field(path, f"pair {i}", e, "score", (int, float), 1.0)) for i, e in enumerate(entries)]
    try:
        weights = dupfactors(probabilities, alpha)
    except ValueError as err:
        raise PreferenceDataError(f"{path}: {err}") from err
    pairs = []
    for i, ((winner, loser), entry, probability, weight) in enumerate(zip(indices, entries, probabilities, weights)):
        caption = _field(path, f"pair {i}", entry, "frame_caption", str, clips[winner].caption)
        gap = _field(path, f"pair {i}", entry, "gap", (int, float), None)
        pairs.append(PreferencePair(winner, loser, caption, probability, None if gap is None else float(gap), weight))
    return pairs


def _check_formats(clips: list[ClipEntry], expected: ClipFormat | None, source: str) -> None:
    """Every clip has the `expected` frame count and size (from `source`), or, with none expected, that of the first."""
    for clip in clips:
        try:
            found = probe_mp4(clip.path)
        except ClipError as err:
            raise PreferenceDataError(str(err)) from err
        if expected is None:
            expected, source = found, f"{clips[0].path.name} (the first clip)"
        if found != expected:
            raise PreferenceDataError(f"{clip.path} has {found.frames} frames of {found.width}x{found.height}; {source} "
                                      f"says {expected.frames} frames of {expected.width}x{expected.height}")


def read_dataset(folder: Path, family: str | None = None, clip_format: ClipFormat | None = None,
                 alpha: float | None = None) -> PreferenceDataset:
    """Read and validate a dataset (ours or a VideoDPO-layout folder). `family` and `clip_format` are what the
    training asks for (refused when dataset.json or the clips say otherwise); `alpha` overrides dataset.json's (0
    without one, as VideoDPO ships)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PreferenceDataError(f"the preference dataset {folder} does not exist")
    info, latent_shape = _read_info(folder)
    if info and family and info.family != family:
        raise PreferenceDataError(f"{folder / DATASET_FILE}: the dataset was made with {info.family}; it cannot train {family}")
    if info and clip_format and info.clip_format != clip_format:
        raise PreferenceDataError(f"{folder / DATASET_FILE}: the dataset's clips are {info.frames} frames of "
                                  f"{info.width}x{info.height}; the training takes {clip_format.frames} frames of "
                                  f"{clip_format.width}x{clip_format.height}")
    clips = _read_clips(folder, family or (info.family if info else None), latent_shape)
    pairs = _read_pairs(folder, clips, alpha if alpha is not None else info.alpha if info else 0.0)
    expected = clip_format or (info.clip_format if info else None)
    _check_formats(clips, expected, "the training" if clip_format else str(folder / DATASET_FILE))
    return PreferenceDataset(folder, info, clips, pairs)


def dataset_format(folder: Path) -> ClipFormat:
    """The frame count and size of a dataset's clips: dataset.json's, or the first clip's (a VideoDPO folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PreferenceDataError(f"the preference dataset {folder} does not exist")
    info, _ = _read_info(folder)
    if info is not None:
        return info.clip_format
    clips = _read_clips(folder, None, [])
    if not clips:
        raise PreferenceDataError(f"{folder / METADATA_FILE} lists no clips")
    try:
        return probe_mp4(clips[0].path)
    except ClipError as err:
        raise PreferenceDataError(str(err)) from err
