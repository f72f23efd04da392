"""Run with ComfyUI's Python (COMFYUI_PATH set): the pack's Wan reward-LoRA nodes against ComfyUI's LoraLoaderModelOnly.

Builds two tiny native Wan models (ComfyUI's own WanModel, original key names) and reward LoRAs in the published
format, patches the experts with the pack's node and with LoraLoaderModelOnly, samples both, and prints a JSON
report on stdout. Usage: python wan_lora_parity.py <pack root> <work dir>
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

pack_root, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, os.environ["COMFYUI_PATH"])
os.chdir(os.environ["COMFYUI_PATH"])
from comfy.cli_args import args  # noqa: E402

args.cpu = True
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.ldm.wan.model  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sample  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402

for folder in ("loras", "diffusion_models"):
    (work / folder).mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path(folder, str(work / folder), is_default=True)

spec = importlib.util.spec_from_file_location("video_reward_lora_pack", pack_root / "__init__.py",
                                              submodule_search_locations=[str(pack_root)])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
from video_reward_lora_pack.nodes.lora import WanRewardLoraPair  # noqa: E402
from video_reward_lora_pack.training.lora.formats import Lora, LoraModule, write_lora  # noqa: E402
from video_reward_lora_pack.training.lora.keymap import COGVIDEOX  # noqa: E402

result = {}
for expert, seed in (("high", 0), ("low", 1)):
    torch.manual_seed(seed)
    model = comfy.ldm.wan.model.WanModel(dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=4096, in_dim=16, out_dim=16,
                                          operations=comfy.ops.disable_weight_init)
    state = {k: torch.randn_like(v) * 0.05 for k, v in model.state_dict().items()}
    save_file(state, work / "diffusion_models" / f"tiny_wan_{expert}_noise.safetensors")
    generator = torch.Generator().manual_seed(10 + seed)
    modules = {}
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Linear) and ".ffn." not in f".{name}.":
            modules[name] = LoraModule(torch.randn(4, layer.in_features, generator=generator).to(torch.bfloat16),
                                       torch.randn(layer.out_features, 4, generator=generator).to(torch.bfloat16) * 0.1, 2.0)
    write_lora(Lora("wan", modules), work / "loras" / f"Wan2.2-Fun-A14B-InP-{expert}-noise-HPS2.1.safetensors", "videox")
    result[f"{expert}_modules"] = len(modules)

write_lora(Lora(COGVIDEOX, {"transformer_blocks.0.attn1.to_q": LoraModule(torch.ones(4, 8), torch.ones(8, 4), 2.0)}),
           work / "loras" / "cog.safetensors", "videox")

high = nodes.UNETLoader().load_unet("tiny_wan_high_noise.safetensors", "default")[0]
low = nodes.UNETLoader().load_unet("tiny_wan_low_noise.safetensors", "default")[0]
ours_high, ours_low, report = WanRewardLoraPair.execute(
    high, low, "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors", 0.7,
    "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors", 0.55).args
loader = nodes.LoraLoaderModelOnly()
core_high = loader.load_lora_model_only(high, "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors", 0.7)[0]
core_low = loader.load_lora_model_only(low, "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors", 0.55)[0]


def sample(model):
    torch.manual_seed(5)
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    positive = [[torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(8)), {}]]
    negative = [[torch.zeros(1, 6, 4096), {}]]
    return comfy.sample.sample(model, noise, 3, 2.0, "euler", "simple", positive, negative, latent, seed=5)


for name, (ours, core, base) in {"high": (ours_high, core_high, high), "low": (ours_low, core_low, low)}.items():
    a, b, c = sample(ours), sample(core), sample(base)
    result[f"{name}_equal_to_core"] = bool(torch.equal(a, b))
    result[f"{name}_differs_from_base"] = float((a - c).abs().max())
result["report"] = report

_, _, swapped = WanRewardLoraPair.execute(high, low, "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors", 0.7, "none", 0.7).args
result["swapped_report"] = swapped
try:
    WanRewardLoraPair.execute(high, low, "cog.safetensors", 0.7, "none", 0.7)
except ValueError as err:
    result["cog_error"] = str(err)
print("RESULT " + json.dumps(result))
