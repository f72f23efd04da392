"""Video model families behind one interface (see base.VideoFamily)."""
from __future__ import annotations

from importlib import import_module

CLASSES = {"cogvideox": "cogvideox:CogVideoXFun", "easyanimate": "easyanimate:EasyAnimate", "wan2.2": "wan:Wan22"}


def family_class(family: str) -> type:
    """The VideoFamily class of a training family key, imported on demand (its class methods need no model)."""
    module, name = CLASSES[family].split(":")
    return getattr(import_module(f".{module}", __name__), name)
