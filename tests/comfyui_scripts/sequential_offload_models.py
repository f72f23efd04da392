"""Run with ComfyUI's Python (COMFYUI_PATH set): ComfyUI's list of loaded models around the sampler's memory modes.

Loads a tiny CogVideoX-Fun folder (`<work>/models/CogVideoX_Fun/<name>`, written by the test) with the pack's
loader, loads an unrelated model through ComfyUI's model manager, then samples with model offload, sequential
offload and model offload again, recording after each which patchers ComfyUI lists as loaded. Prints a JSON report
on stdout. Usage: python sequential_offload_models.py <pack root> <work dir> <cogvideox folder name>
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

pack_root, work, cog = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sys.path.insert(0, os.environ["COMFYUI_PATH"])
os.chdir(os.environ["COMFYUI_PATH"])
from comfy.cli_args import args  # noqa: E402

args.cpu = True
import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import folder_paths  # noqa: E402

folder_paths.models_dir = str(work / "models")
spec = importlib.util.spec_from_file_location("video_reward_lora_pack", pack_root / "__init__.py",
                                              submodule_search_locations=[str(pack_root)])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
from video_reward_lora_pack.nodes.sampling import CogVideoXFunLoader, VideoModelSampler  # noqa: E402

model = CogVideoXFunLoader.execute(cog, "fp32").args[0]
other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(8, 8), load_device=mm.get_torch_device(),
                                         offload_device=mm.unet_offload_device())
mm.load_models_gpu([other])


def loaded_state() -> dict:
    loaded = mm.loaded_models()
    return {
        "ours": sorted(role for role, patcher in model.patchers.items() if any(patcher is p for p in loaded)),
        "ours_loaded_bytes": {role: patcher.loaded_size() for role, patcher in model.patchers.items()},
        "other": any(other is p for p in loaded),
        "entries": len(loaded),
        "distinct": len({id(p) for p in loaded}),
    }


def run(memory: str) -> torch.Tensor:
    return VideoModelSampler.execute(model, "a red ball", "", 32, 32, 9, 2, 6.0, 43, memory).args[0]


result = {"roles": sorted(model.patchers)}
first = run("model offload")
result["after_model_offload"] = loaded_state()
streamed = run("sequential offload")
result["after_sequential_offload"] = loaded_state()
again = run("model offload")
result["after_model_offload_again"] = loaded_state()
result["sequential_equals_offload"] = bool(torch.equal(streamed, first))
result["again_equals_first"] = bool(torch.equal(again, first))
print("RESULT " + json.dumps(result))
