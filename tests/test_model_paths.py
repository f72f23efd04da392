"""Model files the user symlinked into ComfyUI's folders (or listed as extra roots) resolve and load; names with `..`
or absolute names are refused; outputs are judged by their name (links the user made in the output folder are
written through, as ComfyUI's own savers do)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from video_reward_lora.reward.files import ModelFileError, list_entries, output_path, resolve_inside
from video_reward_lora.reward.registry import CLIP_H_TOKENIZER, load_reward

HPS = "HPS_v2.1_compressed.pt"


@pytest.fixture(scope="module")
def elsewhere(reward_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HPS v2.1 checkpoint, its tokenizer folder and PickScore on 'another disk' (outside every model folder)."""
    disk = tmp_path_factory.mktemp("other_disk")
    shutil.copy(reward_root / HPS, disk / HPS)
    for folder in (CLIP_H_TOKENIZER, "PickScore_v1"):
        shutil.copytree(reward_root / folder, disk / folder)
    return disk


def _scores(key: str, roots: list[Path], video: torch.Tensor, **names: str) -> torch.Tensor:
    with torch.no_grad():
        return load_reward(key, roots, **names)(video, "a red square")


def test_symlinked_files_folders_and_roots_load(elsewhere, reward_root, tmp_path, video):
    expected = _scores("hps_v2.1", [reward_root], video)
    links = tmp_path / "models" / "reward_models"  # a file and a folder linked in
    links.mkdir(parents=True)
    (links / HPS).symlink_to(elsewhere / HPS)
    (links / CLIP_H_TOKENIZER).symlink_to(elsewhere / CLIP_H_TOKENIZER, target_is_directory=True)
    assert torch.equal(_scores("hps_v2.1", [links], video), expected)
    (links / "gone.pt").symlink_to(tmp_path / "deleted.pt")  # dangling: not listed, not found
    assert list_entries([links]) == [CLIP_H_TOKENIZER, HPS]
    assert resolve_inside([links], "gone.pt") is None
    root_link = tmp_path / "linked_root"  # models/reward_models itself a link
    root_link.symlink_to(elsewhere, target_is_directory=True)
    assert resolve_inside([root_link], HPS) == root_link / HPS
    assert torch.equal(_scores("hps_v2.1", [root_link], video), expected)
    empty = tmp_path / "empty_default_root"  # the default folder empty, the files in an extra_model_paths.yaml root
    empty.mkdir()
    pickscore = _scores("pickscore", [empty, elsewhere], video)
    assert torch.equal(pickscore, _scores("pickscore", [reward_root], video))
    assert pickscore.shape == (6,) and bool(pickscore.abs().sum() > 0)


@pytest.mark.parametrize("name,message", [
    ("../reward_models/" + HPS, "points outside the reward_models folder"),
    (f"{CLIP_H_TOKENIZER}/../{HPS}", r"\('\.\.' is not allowed\)"),
    ("..", "points outside"),
    ("/etc/passwd", "must be a name relative to the reward_models folder"),
    ("\\etc\\passwd", "must be a name relative to"),
    (".", "must be a name relative to"),
])
def test_names_that_leave_the_folder_are_refused(reward_root, name, message):
    with pytest.raises(ModelFileError, match=message):
        load_reward("hps_v2.1", [reward_root], checkpoint=name)
    with pytest.raises(ModelFileError, match=message.replace("the reward_models folder", "models/X")):
        resolve_inside([reward_root], name, "models/X")


def test_empty_name_is_refused(reward_root):
    with pytest.raises(ModelFileError, match="'' must be a name relative to models/X"):
        resolve_inside([reward_root], "", "models/X")


@pytest.mark.parametrize("family", ["cogvideox", "easyanimate"])
def test_symlinked_video_model_folder_loads(tmp_path, family):
    from video_reward_lora.training.families.cogvideox import CogVideoXFun
    from video_reward_lora.training.families.easyanimate import EasyAnimate
    from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate

    family_cls, write, name = {
        "cogvideox": (CogVideoXFun, write_cogvideox_fun, "CogVideoX-Fun-V1.1-2b-InP"),
        "easyanimate": (EasyAnimate, write_easyanimate, "EasyAnimateV5-7b-zh-InP"),
    }[family]
    target = write(tmp_path / "other_disk" / name)
    models = tmp_path / "models"
    (models / "folder_link").mkdir(parents=True)
    (models / "folder_link" / name).symlink_to(target, target_is_directory=True)
    (models / "root_link").symlink_to(target.parent, target_is_directory=True)
    for root in ("folder_link", "root_link"):
        found = resolve_inside([models / "missing", models / root], name, "models/X")
        assert found == models / root / name
        loaded = family_cls.load(found)
        assert sum(p.numel() for p in loaded.transformer.parameters()) > 0
    with pytest.raises(ModelFileError, match="'../other_disk/.*' points outside models/X"):
        resolve_inside([models / "folder_link"], f"../other_disk/{name}", "models/X")


def test_output_names_are_judged_by_name(tmp_path):
    output = tmp_path / "output"
    output.mkdir()
    (tmp_path / "big_disk").mkdir()
    (output / "baked").symlink_to(tmp_path / "big_disk", target_is_directory=True)  # the user's own link
    target = output_path(output, "baked/model", ".safetensors")
    assert target == output / "baked" / "model.safetensors"
    target.write_bytes(b"x")
    assert (tmp_path / "big_disk" / "model.safetensors").read_bytes() == b"x"
    with pytest.raises(ModelFileError, match="already exists"):
        output_path(output, "baked/model.safetensors", ".safetensors")
    (output / "dangling.safetensors").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ModelFileError, match="already exists"):
        output_path(output, "dangling", ".safetensors")
    assert output_path(output, "dangling", ".safetensors", overwrite=True) == output / "dangling.safetensors"
    for name, message in (("../escape", "points outside"), ("baked/../../escape", "points outside"),
                          (str(tmp_path / "abs"), "must be a name relative to"), ("  ", "must be a name relative to")):
        with pytest.raises(ModelFileError, match=message):
            output_path(output, name, ".safetensors")


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """atomic_folder over an existing folder: a failed final rename puts the old folder back, whole."""
    import os

    from video_reward_lora.reward.files import atomic_folder

    target = tmp_path / "step-000003"
    with atomic_folder(target) as staging:
        (staging / "lora.safetensors").write_text("old")
    real_replace = os.replace

    def failing(source, destination):
        if Path(destination) == target and ".tmp" in Path(source).name:
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError), atomic_folder(target) as staging:
        (staging / "lora.safetensors").write_text("new")
    assert (target / "lora.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]
    monkeypatch.setattr(os, "replace", real_replace)
    with atomic_folder(target) as staging:
        (staging / "lora.safetensors").write_text("new")
    assert (target / "lora.safetensors").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]
