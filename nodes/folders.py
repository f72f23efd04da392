"""The pack's model folders, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..reward.files import resolve_inside

REWARD_MODELS = "reward_models"
PREFERENCE_DATASETS = "preference_datasets"  # folders of preference pairs (VideoDPO's layout), for DPO training
# Folder names the VideoX-Fun / EasyAnimate ComfyUI nodes use, so existing downloads are found where they are.
VIDEO_MODEL_FOLDERS = {"CogVideoX-Fun": "CogVideoX_Fun", "EasyAnimate": "EasyAnimate"}


def _register(name: str) -> None:
    """Add `models/<name>`, keeping any paths an extra_model_paths.yaml declared first."""
    default = os.path.join(folder_paths.models_dir, name)
    if name in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(name, default)
    else:
        folder_paths.folder_names_and_paths[name] = ([default], set(folder_paths.supported_pt_extensions))


def register_model_folders() -> None:
    for name in (REWARD_MODELS, PREFERENCE_DATASETS, *VIDEO_MODEL_FOLDERS.values()):
        _register(name)


def roots(name: str) -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths(name)]


def reward_model_roots() -> list[Path]:
    return roots(REWARD_MODELS)


def model_entry(folder: str, name: str) -> Path:
    """`name`, a file or folder in one of the `folder` model folders (as ComfyUI lists it: links the user made are
    followed, names with `..` or absolute names refused), or an error that says where it was looked for."""
    places = roots(folder)
    found = resolve_inside(places, name, f"models/{folder}")
    if found is None:
        raise FileNotFoundError(f"'{name}' is not in models/{folder} (looked in: {', '.join(map(str, places)) or 'no folder'})")
    return found


def lora_path(name: str) -> Path:
    """A file chosen from ComfyUI's loras list (ComfyUI refuses names outside its folders)."""
    return Path(folder_paths.get_full_path_or_raise("loras", name))
