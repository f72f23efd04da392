"""Write tests/data/pack_object_info.json: the pack's node schemas as a real ComfyUI serves them at /object_info.

The server runs with empty model folders, so folder-dependent combos hold only their fixed entries (`none`,
`auto (official name)`); the workflow checker accepts any file name there. Run after changing a node's schema:

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=<its python> .venv/bin/python tests/comfyui_scripts/dump_pack_object_info.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comfyui_server import PACK_NAME, PACK_ROOT, comfyui_server  # noqa: E402

DUMP = PACK_ROOT / "tests" / "data" / "pack_object_info.json"


def live_pack_schemas(comfyui: str) -> dict:
    """The /object_info entries of the pack's nodes, from a fresh server with no models."""
    with tempfile.TemporaryDirectory() as work:
        with comfyui_server(comfyui, Path(work), {PACK_NAME: PACK_ROOT}, {}) as server:
            info = server.get("/object_info")
    module = f"custom_nodes.{PACK_NAME}"
    return {name: schema for name, schema in sorted(info.items()) if schema["python_module"] == module}


def dump_text(schemas: dict) -> str:
    return json.dumps(schemas, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    schemas = live_pack_schemas(os.environ["COMFYUI_PATH"])
    DUMP.parent.mkdir(parents=True, exist_ok=True)
    DUMP.write_text(dump_text(schemas))
    print(f"wrote {len(schemas)} node schemas to {DUMP}")
