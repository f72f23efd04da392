"""Files of the pack: finding model files by name inside ComfyUI's folders, reading them within bounds and without
executing pickled code, and writing every file atomically."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

if TYPE_CHECKING:
    import zipfile

MODEL_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".sft")
# bounds on what a model file may make us read: safetensors' own header limit; a torch zip's pickle (the tensors' bytes
# are separate records, so even a whole pickled model's pickle is small); how far the sizes a torch zip's entries declare
# may exceed the file (torch stores its entries uncompressed, so they add up to about the file's size)
MAX_SAFETENSORS_HEADER = 100_000_000
MAX_PICKLE_BYTES = 64 << 20
MAX_ZIP_EXPANSION = 4
_SAFETENSORS_ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class ModelFileError(Exception):
    """A model file is missing, outside the model folders, or of the wrong kind."""


def check_relative(name: str, folder: str) -> None:
    """Refuse a `name` that does not stay inside `folder` by its text: empty, absolute (or with a drive), or with a
    `..` part. Containment is judged on the name, as ComfyUI judges it, not on where a link the user made points."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name.strip() or not parts or os.path.isabs(name) or Path(name).drive or parts[0] == "/":
        raise ModelFileError(f"'{name}' must be a name relative to {folder}")
    if ".." in parts:
        raise ModelFileError(f"'{name}' points outside {folder} ('..' is not allowed); give a name inside it")


def resolve_inside(roots: Iterable[Path], name: str, folder: str = "the reward_models folder") -> Path | None:
    """The first existing `root/name`, as named (symlinked files, folders and roots are followed when read); None
    when absent. Raises ModelFileError when `name` leaves `folder` (see `check_relative`)."""
    check_relative(name, folder)
    for root in roots:
        candidate = Path(root) / name
        if candidate.exists():
            return candidate
    return None


def output_path(folder: Path, name: str, suffix: str, overwrite: bool = False) -> Path:
    """`folder/name` (with `suffix` added when missing) for a new file, refusing names that leave the folder (judged
    on the name; a link the user made inside the folder is written through, as ComfyUI's own savers do) and, unless
    `overwrite`, names that exist (a dangling link included)."""
    check_relative(name, str(folder))
    if not name.endswith(suffix):
        name += suffix
    target = Path(folder).absolute() / name
    if os.path.lexists(target) and not overwrite:
        raise ModelFileError(f"{target} already exists; choose another name or allow overwriting")
    return target


def list_entries(roots: Iterable[Path]) -> list[str]:
    """Top-level model files and model folders in the roots (symlinks to them included, dangling links skipped),
    sorted, for a file chooser."""
    names: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.name.startswith(".") or not entry.exists():
                continue
            if entry.is_dir() or entry.suffix.lower() in MODEL_EXTENSIONS:
                names.add(entry.name)
    return sorted(names, key=str.lower)


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header, offset of the data) of a safetensors file, read within bounds: the header's claimed length must fit the
    file and safetensors' 100 MB limit, and every tensor's data_offsets must lie inside the file and match its shape."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise ModelFileError(
                    f"{path.name} is not a readable safetensors file (truncated or corrupt?): its header claims "
                    f"{length if len(prefix) == 8 else 'an unreadable number of'} bytes in a file of {size} bytes"
                )
            header = json.loads(handle.read(length))
    except OSError as err:
        raise ModelFileError(f"{path.name} could not be read: {err}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): bad header: {err}") from err
    if not isinstance(header, dict):
        raise ModelFileError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): its header is not a table")
    data = size - 8 - length
    for key, entry in header.items():
        if key != "__metadata__":
            _check_tensor_entry(path, key, entry, data)
    return header, 8 + length


def _check_tensor_entry(path: Path, key: str, entry: Any, data: int) -> None:
    unreadable = f"{path.name} is not a readable safetensors file (truncated or corrupt?):"
    try:
        begin, end = (int(v) for v in entry["data_offsets"])
        shape, dtype = [int(v) for v in entry["shape"]], str(entry["dtype"])
    except (TypeError, ValueError, KeyError) as err:
        raise ModelFileError(f"{unreadable} the header entry of {key} is malformed: {entry!r:.200}") from err
    if not 0 <= begin <= end <= data:
        raise ModelFileError(f"{unreadable} tensor {key} claims bytes {begin}..{end} of the data, but the file holds {data}")
    item = _SAFETENSORS_ITEM_BYTES.get(dtype)
    if item is not None and (min(shape, default=1) < 0 or math.prod(shape) * item != end - begin):
        raise ModelFileError(f"{unreadable} tensor {key} ({dtype}, shape {shape}) does not match its {end - begin} bytes")


def _check_torch_zip(path: Path, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The data.pkl entry of a torch zip checkpoint, after checking the sizes its entries declare (which bound what
    reading them can produce) against MAX_PICKLE_BYTES and the file's real size."""
    entries = archive.infolist()
    pickle_entry = next((e for e in entries if e.filename.endswith("data.pkl")), None)
    if pickle_entry is None:
        raise ModelFileError(f"{path.name} is not a PyTorch zip checkpoint: it has no data.pkl")
    if pickle_entry.file_size > MAX_PICKLE_BYTES:
        raise ModelFileError(
            f"{path.name} was refused: its pickle ({pickle_entry.filename}) declares {pickle_entry.file_size:,} bytes, "
            f"over the {MAX_PICKLE_BYTES >> 20} MiB a model checkpoint's pickle needs (a damaged or hostile file?)"
        )
    size = path.stat().st_size
    declared = sum(e.file_size for e in entries)
    if declared > MAX_ZIP_EXPANSION * size + MAX_PICKLE_BYTES:
        raise ModelFileError(
            f"{path.name} was refused: its entries declare {declared:,} bytes, far more than the file's {size:,} bytes "
            "(a zip bomb? PyTorch checkpoints store their data uncompressed)"
        )
    return pickle_entry


def read_torch_pickle(path: Path) -> bytes:
    """The pickle (data.pkl) of a torch zip checkpoint, read within bounds (see `_check_torch_zip`)."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(_check_torch_zip(path, archive))
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as err:
        raise ModelFileError(f"{path.name} is not a PyTorch zip checkpoint (truncated or corrupt?): {err}") from err


def check_torch_zip(path: Path) -> None:
    """Refuse a torch zip checkpoint whose entries would expand far beyond the file before torch.load reads it;
    files of torch's older non-zip format pass unchecked."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            _check_torch_zip(path, archive)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ModelFileError(f"{path.name} is not a PyTorch zip checkpoint (truncated or corrupt?): {err}") from err


def read_torch_file(path: Path) -> Any:
    """`torch.load` restricted to tensors and plain containers (never unpickles code), of a file within bounds."""
    import pickle

    import torch

    check_torch_zip(path)
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

    safetensors_header(path)
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
    """A temporary folder beside `path` for the block to fill; it replaces `path` when the block ends without error
    (an existing folder is renamed aside first and removed only once the new one is in place) and is removed when it
    fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        aside = staging.with_suffix(".old")
        if path.exists():
            os.replace(path, aside)
        try:
            os.replace(staging, path)
        except BaseException:
            if aside.exists():  # the old folder back where it was
                os.replace(aside, path)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


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
