"""What importing the pack adds to ComfyUI's start-up, measured the way ComfyUI loads custom nodes.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfyui/python tests/benchmarks/bench_import.py

Runs ComfyUI's own `nodes.load_custom_node` on this pack and on an empty pack (the baseline), each in a fresh
process after ComfyUI's core nodes are imported, and prints the times, their ratio and the peak RSS added.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]


def measure(pack: str) -> dict:
    comfyui = os.environ["COMFYUI_PATH"]
    sys.path.insert(0, comfyui)
    os.chdir(comfyui)
    from comfy.cli_args import args

    args.cpu = True
    import nodes

    asyncio.run(nodes.init_builtin_extra_nodes())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    ok = asyncio.run(nodes.load_custom_node(pack))
    seconds = time.perf_counter() - start
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"ok": ok, "seconds": seconds, "rss_added_mib": added}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(measure(sys.argv[1])))
        return
    empty = Path(tempfile.mkdtemp()) / "empty_pack"
    empty.mkdir()
    (empty / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    runs = {}
    for name, path in (("empty pack", empty), ("this pack", PACK)):
        out = subprocess.run([sys.executable, __file__, str(path)], capture_output=True, text=True, check=True).stdout
        runs[name] = json.loads(out.strip().splitlines()[-1])
        if not runs[name]["ok"]:
            raise SystemExit(f"{name} failed to import")
    for name, r in runs.items():
        print(f"{name:>10}: {r['seconds'] * 1000:7.1f} ms, peak RSS +{r['rss_added_mib']:.1f} MiB")
    print(f"ratio: {runs['this pack']['seconds'] / runs['empty pack']['seconds']:.1f}x the empty pack")


if __name__ == "__main__":
    main()
