"""Run with ComfyUI's Python (COMFYUI_PATH set): the pack's nodes on model folders the user symlinked.

`<work>` holds models/ (CogVideoX_Fun/ with a linked model folder, EasyAnimate itself a link, loras/ with a linked
LoRA file and a linked `converted` folder), input/ (a linked folder of prompt files) and output/, all prepared by
the test. Calls the loaders, the training node's path helpers and the LoRA nodes, and prints a JSON report on
stdout. Usage: python node_model_paths.py <pack root> <work dir> <cogvideox folder name> <easyanimate folder name>
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

pack_root, work, cog, easyanimate = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, os.environ["COMFYUI_PATH"])
os.chdir(os.environ["COMFYUI_PATH"])
from comfy.cli_args import args  # noqa: E402

args.cpu = True
import folder_paths  # noqa: E402

folder_paths.models_dir = str(work / "models")  # the pack registers models/CogVideoX_Fun and models/EasyAnimate here
folder_paths.add_model_folder_path("loras", str(work / "models" / "loras"), is_default=True)
folder_paths.set_input_directory(str(work / "input"))
folder_paths.set_output_directory(str(work / "output"))

spec = importlib.util.spec_from_file_location("video_reward_lora_pack", pack_root / "__init__.py",
                                              submodule_search_locations=[str(pack_root)])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
from video_reward_lora_pack.nodes import lora, sampling, training  # noqa: E402


def error(call, *arguments) -> str:
    try:
        call(*arguments)
    except Exception as err:  # the message is what the test checks
        return f"{type(err).__name__}: {err}"
    return "no error"


result = {
    "cog_choices": sampling._folders("CogVideoX-Fun"),
    "easyanimate_choices": sampling._folders("EasyAnimate"),
    "training_folders": training._model_folders(),
    "model_files": training._model_files("cogvideox", f"CogVideoX-Fun/{cog}", {}),
    "prompt_files": training._prompt_files(),
    "export": str(training._export_path("sub/my_lora")),
    "export_up": error(training._export_path, "../my_lora"),
    "export_absolute": error(training._export_path, str(work / "my_lora")),
    "loader_up": error(sampling.CogVideoXFunLoader.execute, f"../EasyAnimate/{easyanimate}", "fp32"),
    "model_files_up": error(training._model_files, "cogvideox", f"CogVideoX-Fun/../EasyAnimate/{easyanimate}", {}),
}
model = sampling.CogVideoXFunLoader.execute(cog, "fp32").args[0]
result["cog_parameters"] = sum(p.numel() for p in model.family.transformer.parameters())
result["easyanimate_parameters"] = sum(
    p.numel() for p in sampling.EasyAnimateLoader.execute(easyanimate, "fp32").args[0].family.transformer.parameters())
result["lora_report"] = lora.VideoModelRewardLora.execute(model, "linked.safetensors", 0.7).args[1]
result["convert"] = lora.ConvertRewardLora.execute("linked.safetensors", "comfyui", "converted/cog", False).args[0]
result["convert_up"] = error(lora.ConvertRewardLora.execute, "linked.safetensors", "comfyui", "../escape", False)
print("RESULT " + json.dumps(result))
