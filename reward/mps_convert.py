"""One-time conversion of the official MPS checkpoint (a whole pickled `nn.Module`) to safetensors.

The pickle is read with an unpickler that resolves only tensor-rebuilding functions and plain containers.
Every other class or function it names becomes an inert stub that records its arguments and state, so no code
from the file (or from the MPS repository) ever runs. The module tree is then walked for its weights.

Usage: python -m video_reward_lora.reward.mps_convert MPS_overall_checkpoint.pth [MPS_overall_checkpoint.safetensors]
"""
from __future__ import annotations

import argparse
import collections
import pickle
import pickletools
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .files import ModelFileError, check_torch_zip, read_torch_pickle, write_safetensors_atomic

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}
_TENSOR_GLOBALS = {f"{module}.{name}" for module, name in _ALLOWED}


class Stub:
    """Stands in for any class or function a pickle names; calling or building it only records data."""

    qualified = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    @property
    def fields(self) -> dict[str, Any]:
        state = self.__dict__.get("_state")
        if isinstance(state, tuple):
            state = state[0]
        return state if isinstance(state, dict) else {}


class _StubUnpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        qualified = f"{module}.{name}"
        if qualified not in self._stubs:
            self._stubs[qualified] = type(name, (Stub,), {"qualified": qualified})
        return self._stubs[qualified]


_restricted_pickle = SimpleNamespace(Unpickler=_StubUnpickler, load=pickle.load, __name__="restricted_pickle")


def pickle_globals(path: Path) -> set[str]:
    """The `module.name` globals a torch zip checkpoint's pickle refers to, read (within bounds) without unpickling it."""
    data = read_torch_pickle(path)
    names: set[str] = set()
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.add(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except ValueError as err:
        raise ModelFileError(f"{path.name} has a damaged pickle: {err}") from err
    return names


def is_pickled_module(path: Path) -> bool:
    """True when the checkpoint pickles Python objects beyond tensors and containers (e.g. a whole model)."""
    return any(
        not (name in _TENSOR_GLOBALS or name.endswith("Storage") or name.startswith("torch.") and name.count(".") == 1)
        for name in pickle_globals(path)
    )


def _module_weights(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    fields = node.fields
    skip = fields.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (fields.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (fields.get("_modules") or {}).items():
        if isinstance(child, Stub):
            _module_weights(child, f"{prefix}{name}.", out)


def module_weights(root: Any, name: str) -> dict[str, torch.Tensor]:
    """The state dict of a stubbed module tree: parameters and persistent buffers, by dotted path."""
    if not isinstance(root, Stub) or "_modules" not in root.fields:
        raise ModelFileError(f"{name} does not hold a pickled torch module (found {type(root).__name__})")
    out: dict[str, torch.Tensor] = {}
    _module_weights(root, "", out)
    seen: set[int] = set()
    for key, tensor in out.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            out[key] = tensor.clone()
        seen.add(pointer)
    return out


def mps_weights(source: Path) -> dict[str, torch.Tensor]:
    """The weights of a pickled MPS model (checked to be MPS's), read without running pickled code."""
    from .mps import split_state

    check_torch_zip(source)
    try:
        root = torch.load(source, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{source.name} could not be read as a pickled checkpoint (truncated or corrupt?): {err}") from err
    weights = module_weights(root, source.name)
    split_state(weights, source.name)
    return weights


def save_converted(weights: dict[str, torch.Tensor], source: Path, target: Path) -> Path:
    """Write converted MPS weights as safetensors (atomically); returns the target path."""
    write_safetensors_atomic(weights, target, {"format": "mps", "converted_from": source.name})
    return target


def convert_mps_checkpoint(source: Path, target: Path) -> Path:
    """Write the weights of a pickled MPS model as safetensors (atomically); returns the target path."""
    return save_converted(mps_weights(source), source, target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert MPS_overall_checkpoint.pth to safetensors without running pickled code.")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path, nargs="?", help="default: the source name with .safetensors")
    args = parser.parse_args(argv)
    target = convert_mps_checkpoint(args.source, args.target or args.source.with_suffix(".safetensors"))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
