"""The pack's model folder, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

REWARD_MODELS = "reward_models"


def register_reward_models_folder() -> None:
    """Add `models/reward_models`, keeping any paths an extra_model_paths.yaml declared first."""
    default = os.path.join(folder_paths.models_dir, REWARD_MODELS)
    if REWARD_MODELS in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(REWARD_MODELS, default)
    else:
        folder_paths.folder_names_and_paths[REWARD_MODELS] = ([default], set(folder_paths.supported_pt_extensions))


def reward_model_roots() -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths(REWARD_MODELS)]


def lora_path(name: str) -> Path:
    """A file chosen from ComfyUI's loras list (ComfyUI refuses names outside its folders)."""
    return Path(folder_paths.get_full_path_or_raise("loras", name))
