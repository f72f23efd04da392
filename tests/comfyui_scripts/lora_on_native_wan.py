"""Run with ComfyUI's Python (COMFYUI_PATH set): load a Wan expert file with ComfyUI's UNETLoader and a LoRA file with
ComfyUI's own LoRA loader (LoraLoaderModelOnly), and print a JSON report: how many of the LoRA's modules ComfyUI's key
mapping patched and how far the patched weights moved. Usage: python lora_on_native_wan.py <pack root> <expert file>
<lora file>"""
import json
import os
import sys
from pathlib import Path

expert, lora = Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, os.environ["COMFYUI_PATH"])
os.chdir(os.environ["COMFYUI_PATH"])
from comfy.cli_args import args  # noqa: E402

args.cpu = True
import folder_paths  # noqa: E402
import nodes  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

folder_paths.add_model_folder_path("diffusion_models", str(expert.parent), is_default=True)
folder_paths.add_model_folder_path("loras", str(lora.parent), is_default=True)
model = nodes.UNETLoader().load_unet(expert.name, "default")[0]
patched = nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora.name, 1.0)[0]
modules = {key.rsplit(".lora_", 1)[0] for key in load_file(lora) if ".lora_" in key}
print("RESULT " + json.dumps({"lora_modules": len(modules), "patched_weights": len(patched.patches)}))
