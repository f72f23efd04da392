"""Finding reward-model files inside the model folders, and reading them without executing pickled code."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

MODEL_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".sft")


class ModelFileError(Exception):
    """A model file is missing, outside the model folders, or of the wrong kind."""


def resolve_inside(roots: Iterable[Path], name: str) -> Path | None:
    """The first existing `root/name` that stays inside its root; None when absent.

    Raises ModelFileError when `name` tries to leave the folder (absolute path, `..`)."""
    if not name or os.path.isabs(name) or Path(name).drive:
        raise ModelFileError(f"'{name}' must be a name relative to the reward_models folder")
    for root in roots:
        root = Path(root).resolve()
        candidate = (root / name).resolve()
        if candidate != root and root not in candidate.parents:
            raise ModelFileError(f"'{name}' resolves outside the reward_models folder {root}")
        if candidate.exists():
            return candidate
    return None


def output_path(folder: Path, name: str, suffix: str, overwrite: bool = False) -> Path:
    """`folder/name` (with `suffix` added when missing) for a new file, refusing names that leave the folder and,
    unless `overwrite`, names of existing files."""
    if not name.strip() or os.path.isabs(name) or Path(name).drive:
        raise ModelFileError(f"'{name}' must be a file name relative to {folder}")
    if not name.endswith(suffix):
        name += suffix
    folder = folder.resolve()
    target = (folder / name).resolve()
    if folder not in target.parents:
        raise ModelFileError(f"'{name}' resolves outside {folder}")
    if target.exists() and not overwrite:
        raise ModelFileError(f"{target} already exists; choose another name or allow overwriting")
    return target


def list_entries(roots: Iterable[Path]) -> list[str]:
    """Top-level model files and model folders in the roots, sorted, for a file chooser."""
    names: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir() or entry.suffix.lower() in MODEL_EXTENSIONS:
                names.add(entry.name)
    return sorted(names, key=str.lower)


def read_torch_file(path: Path) -> Any:
    """`torch.load` restricted to tensors and plain containers (never unpickles code)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path.name} holds pickled Python objects, not plain weights; it was not loaded "
            f"(only weights-only files are read). Details: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ModelFileError(f"{path.name} could not be read as a PyTorch file (truncated or corrupt?): {err}") from err


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a clear error for a corrupt one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    return tensors, metadata


def read_weights(path: Path) -> dict[str, Any]:
    """A flat state dict from a .safetensors or weights-only torch file."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        return read_safetensors(path)[0]
    loaded = read_torch_file(path)
    if not isinstance(loaded, Mapping):
        raise ModelFileError(f"{path.name} does not hold a state dict (found {type(loaded).__name__})")
    return dict(loaded)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the block to write; renamed onto `path` when the block ends without error
    (with the usual 0666-less-umask mode, as a plain `open` would give), removed when it fails (a full disk leaves
    nothing behind). `suffix` keeps the extension for writers that infer the format from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` for the block to fill; it replaces `path` (an existing folder is removed
    first) when the block ends without error, and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def write_safetensors_atomic(tensors: Mapping[str, Any], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file through a temporary file in the same folder, then rename it into place."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=dict(metadata or {}))
