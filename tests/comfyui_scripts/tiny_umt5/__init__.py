"""Test-only ComfyUI pack: lets CLIPLoader (type wan) load the tiny umt5 the workflow tests write.

ComfyUI builds umt5-xxl from a fixed config (4096 wide, 24 layers, 64 heads, 10240 FFN, 256k vocabulary), which
is far too large for CPU tests. This swaps in config.json here: the same architecture and key names, 4096 wide
(the width Wan's text embedding takes) and 24 layers (so ComfyUI still detects it as T5-XXL), with tiny heads,
FFN and vocabulary. Nothing else changes; the file is found, detected and tokenized as the official one.
"""
import json
from pathlib import Path

import comfy.sd1_clip

TINY_CONFIG = json.loads((Path(__file__).parent / "config.json").read_text())
_original_init = comfy.sd1_clip.SDClipModel.__init__


def _init(self, *args, textmodel_json_config=None, **kwargs):
    if isinstance(textmodel_json_config, str) and textmodel_json_config.endswith("umt5_config_xxl.json"):
        textmodel_json_config = dict(TINY_CONFIG)
    _original_init(self, *args, textmodel_json_config=textmodel_json_config, **kwargs)


comfy.sd1_clip.SDClipModel.__init__ = _init
NODE_CLASS_MAPPINGS = {}
