"""The pack inside a real ComfyUI server (set COMFYUI_PATH; skipped otherwise).

COMFYUI_PYTHON picks the interpreter of ComfyUI's environment (default: this one), and COMFYUI_PYTHONPATH is
prepended to its PYTHONPATH (e.g. a torchvision stub on a CPU-only machine).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from random_lora import linear_shapes, random_lora
from comfyui_server import PACK_NAME, PACK_ROOT, comfy_env, comfy_python, comfyui_server

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set")
NODES = {"VideoRewardModelLoader", "VideoRewardCombine", "VideoRewardScore", "VideoRewardRank", "VideoRewardCompare",
         "WanRewardLoraPair", "RewardLoraLoader", "BakeRewardLora", "ConvertRewardLora",
         "VideoModelRewardLora", "CogVideoXFunLoader", "EasyAnimateLoader", "VideoRewardSampler",
         "TrainRewardLoRA", "RewardTrainingStatus", "CancelRewardTraining"}
VIDEO_MODELS = {  # loader node: (model folder, reward LoRA)
    "CogVideoXFunLoader": ("CogVideoX-Fun-V1.1-2b-InP", "CogVideoX-Fun-V1.1-2b-InP-HPS2.1.safetensors"),
    "EasyAnimateLoader": ("EasyAnimateV5-7b-zh-InP", "EasyAnimateV5-7b-zh-InP-HPS2.1.safetensors"),
}


@pytest.fixture(scope="module")
def lora_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """loras/ with a published-format Wan LoRA, diffusion_models/ with a checkpoint it fits (original Wan names)."""
    import torch
    from safetensors.torch import save_file

    from video_reward_lora.training.lora.formats import Lora, LoraModule, write_lora

    root = tmp_path_factory.mktemp("lora_models")
    (root / "diffusion_models").mkdir()
    names = ["blocks.0.self_attn.q", "blocks.0.cross_attn.k", "head.head"]
    save_file({f"{n}.weight": torch.randn(16, 12).to(torch.bfloat16) for n in names}, root / "diffusion_models" / "tiny_wan.safetensors")
    write_lora(Lora("wan", {n: LoraModule(torch.randn(4, 12), torch.randn(16, 4), 2.0) for n in names}),
               root / "loras" / "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors", "videox")
    from video_reward_lora.training.families.cogvideox import CogVideoXFun
    from video_reward_lora.training.families.easyanimate import EasyAnimate
    from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate

    written = {
        "CogVideoXFunLoader": (CogVideoXFun, write_cogvideox_fun(root / "CogVideoX_Fun" / VIDEO_MODELS["CogVideoXFunLoader"][0])),
        "EasyAnimateLoader": (EasyAnimate, write_easyanimate(root / "EasyAnimate" / VIDEO_MODELS["EasyAnimateLoader"][0])),
    }
    generator = torch.Generator().manual_seed(0)
    for loader, (family_cls, folder) in written.items():
        family = family_cls.load(folder)
        lora = random_lora(family.lora_family, linear_shapes(family.transformer, family.lora_family), generator,
                           rank=4, down_scale=1.0, up_scale=0.2)
        write_lora(lora, root / "loras" / VIDEO_MODELS[loader][1], "videox")
    return root


@pytest.fixture(scope="module")
def server(reward_root: Path, lora_models: Path, tmp_path_factory: pytest.TempPathFactory):
    folders = {"reward_models": reward_root, **{name: lora_models / name for name in
                                                 ("loras", "diffusion_models", "CogVideoX_Fun", "EasyAnimate")}}
    with comfyui_server(COMFYUI, tmp_path_factory.mktemp("comfyui"), {PACK_NAME: PACK_ROOT}, folders) as running:
        yield running


def _loader(model: str, precision: str = "auto") -> dict:
    return {"class_type": "VideoRewardModelLoader", "inputs": {
        "model": model, "checkpoint": "auto (official name)", "encoder": "auto (official name)",
        "precision": precision, "micro_batch": 4}}


def test_nodes_register_with_schemas_and_fast_import(server):
    info = server.get("/object_info")
    assert NODES <= set(info)
    loader = info["VideoRewardModelLoader"]["input"]["required"]
    assert "HPS_v2.1_compressed.pt" in loader["checkpoint"][1]["options"]
    for name in NODES:
        inputs = {**info[name]["input"]["required"], **info[name]["input"].get("optional", {})}
        for key, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{name}.{key} has no tooltip"
    log = server.log.read_text()
    # a failed import is listed as "N seconds (IMPORT FAILED): path", which this does not match
    match = re.search(r"(\d+\.\d+) seconds: \S*comfyui-video-reward-lora", log)
    assert match and float(match.group(1)) < 0.5, log[-2000:]


def test_score_and_rank_a_generated_clip(server):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 320, "height": 192, "batch_size": 4, "color": 0xFF3010}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 320, "height": 192, "batch_size": 4, "color": 0x2040FF}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": _loader("HPS v2.1"),
        "5": {"class_type": "VideoRewardScore", "inputs": {
            "images": ["3", 0], "reward_model": ["4", 0], "prompt": "a red clip", "frames": "evenly",
            "frame_count": 3, "seed": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "reward_plot"}},
        "7": _loader("Aesthetic v2.5", "fp32"),
        "8": {"class_type": "VideoRewardCombine", "inputs": {
            "reward_1": ["4", 0], "weight_1": 1.0, "reward_2": ["7", 0], "weight_2": 0.5, "normalize": True}},
        "9": {"class_type": "VideoRewardRank", "inputs": {
            "images": ["3", 0], "reward_model": ["8", 0], "prompt": "a red clip", "frames_per_video": 4,
            "frames": "all", "frame_count": 1, "seed": 0}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "best"}},
    }
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["5"]["text"][0]
    assert text.startswith("video score:") and re.findall(r"frame (\d+):", text) == ["0", "4", "7"]
    ranking = entry["outputs"]["9"]["text"][0].splitlines()
    assert len(ranking) == 2 and ranking[0].startswith("#1: video ")
    plots = list((server.dirs["output"]).glob("reward_plot_*.png"))
    best = list((server.dirs["output"]).glob("best_*.png"))
    assert len(plots) == 1 and len(best) == 4


def test_clip_rewards_score_the_whole_clip(server):
    """Flicker (no files, no weights) and a mix of Dynamism with HPS through Load Reward Model, Combine and Score
    Video: the clip reward's score is reported for the whole clip."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0xFF3010}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0x2040FF}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": _loader("Flicker"),
        "5": {"class_type": "VideoRewardScore", "inputs": {
            "images": ["3", 0], "reward_model": ["4", 0], "prompt": "", "frames": "all", "frame_count": 1, "seed": 0}},
        "6": _loader("Dynamism"),
        "7": _loader("HPS v2.1"),
        "8": {"class_type": "VideoRewardCombine", "inputs": {
            "reward_1": ["7", 0], "weight_1": 1.0, "reward_2": ["6", 0], "weight_2": 1.0, "normalize": True}},
        "9": {"class_type": "VideoRewardScore", "inputs": {
            "images": ["3", 0], "reward_model": ["8", 0], "prompt": "a red clip", "frames": "first", "frame_count": 1,
            "seed": 0}},
    }
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["5"]["text"][0]
    # 3 red then 3 blue frames: second differences of half the jump at 2 of the 4 places, so flicker is
    # 1 - (mean |red - blue| / 2) * 2 / 4, with mean |red - blue| = (223 + 16 + 239) / 3 / 255
    assert text.startswith("video score: ") and "(the whole clip)" in text, text
    assert float(text.split()[2]) == pytest.approx(1 - (223 + 16 + 239) / 3 / 255 / 4, abs=1e-4)
    assert "(mean of 1 frames)" in entry["outputs"]["9"]["text"][0]


def test_compare_videos_with_a_mix(server):
    """A still red clip (base) and a red-then-blue clip (LoRA) through HPS v2.1 + Dynamism and Compare Videos: one
    row per reward and one for the mix, Dynamism raised by the colour change, and a picture with a row per clip."""
    from PIL import Image

    def empty(batch: int, color: int) -> dict:
        return {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": color}}

    graph = {
        "1": empty(4, 0xFF3010),
        "2": empty(2, 0xFF3010),
        "3": empty(2, 0x2040FF),
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["3", 0]}},
        "5": _loader("HPS v2.1"),
        "6": _loader("Dynamism"),
        "7": {"class_type": "VideoRewardCombine", "inputs": {
            "reward_1": ["5", 0], "weight_1": 1.0, "reward_2": ["6", 0], "weight_2": 1.0, "normalize": True}},
        "8": {"class_type": "VideoRewardCompare", "inputs": {
            "video_a": ["1", 0], "video_b": ["4", 0], "reward_model": ["7", 0], "prompt": "a red clip", "frames": "all",
            "frame_count": 1, "seed": 0, "label_a": "base", "label_b": "LoRA"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "compare"}},
    }
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    table = [[cell.strip() for cell in line.split(" | ")] for line in entry["outputs"]["8"]["text"][0].splitlines()]
    assert [line[0] for line in table] == ["reward", "HPS v2.1", "Dynamism", "mix (1*HPS v2.1 + 1*Dynamism)"]
    assert table[0][1:] == ["base", "LoRA", "LoRA − base"]
    # Dynamism: 0 for the still clip; one jump from red to blue among 3 frame pairs for the other
    jump = (223**2 + 16**2 + 239**2) / 3 / 255**2 / 3
    base, lora, difference = map(float, table[2][1:])
    assert base == 0 and lora == pytest.approx(jump, rel=1e-5) and difference == pytest.approx(jump, rel=1e-5)
    assert np.isfinite([[float(cell) for cell in line[1:]] for line in table[1:]]).all()
    [saved] = (server.dirs["output"]).glob("compare_*.png")
    picture = np.asarray(Image.open(saved).convert("RGB")).astype(int)
    # 4 columns of 64-pixel frames enlarged 4 times, 8-pixel gaps; two rows of (captions, tile, gap)
    tile, gap = 256, 8
    assert picture.shape[1] == 4 * (tile + gap) + gap
    cell = (picture.shape[0] - gap) // 2
    assert picture.shape[0] == 2 * cell + gap and cell - tile - gap in (22, 44)  # one or two caption lines
    centre_x = gap + 3 * (tile + gap) + tile // 2  # the last column
    red, blue = (255, 48, 16), (32, 64, 255)
    assert np.abs(picture[cell - tile // 2, centre_x] - red).max() <= 1  # row A, frame 3: still red
    assert np.abs(picture[2 * cell - tile // 2, centre_x] - blue).max() <= 1  # row B, frame 3: blue


def test_missing_model_file_is_a_clear_node_error(server):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": _loader("PickScore"),
        "3": {"class_type": "VideoRewardScore", "inputs": {
            "images": ["1", 0], "reward_model": ["2", 0], "prompt": "x", "frames": "all", "frame_count": 1, "seed": 0}},
    }
    graph["2"]["inputs"]["checkpoint"] = "HPS_v2.1_compressed.pt"
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert "PickScore needs the PickScore_v1 model folder" in error["exception_message"]


def test_convert_and_bake_through_the_api(server):
    lora = "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors"
    graph = {
        "1": {"class_type": "ConvertRewardLora", "inputs": {"lora": lora, "format": "diffusers",
                                                              "filename": "converted/high_diffusers", "overwrite": False}},
        "2": {"class_type": "BakeRewardLora", "inputs": {"checkpoint": "tiny_wan.safetensors", "lora": lora, "strength": 0.7,
                                                           "filename": "baked/tiny_wan_reward.safetensors", "overwrite": False}},
    }
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    converted = (server.log.parent / "models" / "loras") / "converted" / "high_diffusers.safetensors"
    baked = server.dirs["output"] / "baked" / "tiny_wan_reward.safetensors"
    assert converted.exists() and baked.exists()
    assert "merged 3 modules" in entry["outputs"]["2"]["text"][0]
    again = server.run({"1": {**graph["1"], "inputs": {**graph["1"]["inputs"], "format": "comfyui"}}})
    error = next(m[1] for m in again["status"]["messages"] if m[0] == "execution_error")
    assert "already exists" in error["exception_message"]
    escape = server.run({"2": {**graph["2"], "inputs": {**graph["2"]["inputs"], "filename": "../../escape"}}})
    error = next(m[1] for m in escape["status"]["messages"] if m[0] == "execution_error")
    assert "outside" in error["exception_message"]


def test_wan_pair_node_matches_comfyui_lora_loader(tmp_path):
    """Sampling tiny native Wan experts patched by the pack's node and by LoraLoaderModelOnly gives equal latents."""
    result = _comfyui_script("wan_lora_parity.py", tmp_path)
    assert result["high_equal_to_core"] and result["low_equal_to_core"]
    assert result["high_differs_from_base"] > 1e-3 and result["low_differs_from_base"] > 1e-3
    assert "22/22 modules matched, strength 0.7" in result["report"] and "strength 0.55" in result["report"]
    assert "named for the low-noise expert but was applied to the high-noise model" in result["swapped_report"]
    assert "is a CogVideoX-Fun reward LoRA" in result["cog_error"]


@pytest.mark.parametrize("loader", list(VIDEO_MODELS))
def test_loader_lora_sampler_score_save(server, loader):
    folder, lora = VIDEO_MODELS[loader]
    def sampler(model_link, memory="model offload"):
        return {"class_type": "VideoRewardSampler", "inputs": {
            "model": model_link, "prompt": "a red ball rolling across a field", "negative_prompt": "", "width": 32,
            "height": 32, "frames": 9, "steps": 3, "cfg": 6.0, "seed": 43, "memory": memory}}

    def score(images_link):
        return {"class_type": "VideoRewardScore", "inputs": {"images": images_link, "reward_model": ["5", 0], "prompt": "a red ball",
                                                             "frames": "all", "frame_count": 1, "seed": 0}}

    graph = {
        "1": {"class_type": loader, "inputs": {"model": folder, "precision": "auto"}},
        "2": {"class_type": "VideoModelRewardLora", "inputs": {"model": ["1", 0], "lora": lora, "strength": 0.7}},
        "3": sampler(["2", 0]),
        "4": sampler(["1", 0]),
        "5": _loader("HPS v2.1"),
        "6": score(["3", 0]),
        "7": score(["4", 0]),
        "8": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": ["3", 1]}},
        "9": {"class_type": "SaveVideo", "inputs": {"video": ["8", 0], "filename_prefix": f"video/{loader}", "format": "mp4", "codec": "h264"}},
        "10": sampler(["2", 0], "full"),
        "11": score(["10", 0]),
        "12": sampler(["2", 0], "sequential offload"),
        "13": score(["12", 0]),
    }
    entry = server.run(graph, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    with_lora, base = entry["outputs"]["6"]["text"][0], entry["outputs"]["7"]["text"][0]
    assert len(re.findall(r"frame \d+:", with_lora)) == 9 and with_lora != base
    assert entry["outputs"]["11"]["text"][0] == with_lora and entry["outputs"]["13"]["text"][0] == with_lora  # same frames in every memory mode
    videos = list((server.dirs["output"] / "video").glob(f"{loader}*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    wan_lora = server.run({**graph, "2": {**graph["2"], "inputs": {**graph["2"]["inputs"], "lora": "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors"}}})
    error = next(m[1] for m in wan_lora["status"]["messages"] if m[0] == "execution_error")
    assert "is a Wan2.1/2.2 reward LoRA; the model is" in error["exception_message"]


def _comfyui_script(name: str, *arguments: object) -> dict:
    """Run tests/comfyui_scripts/<name> with ComfyUI's Python and return the JSON it reports."""
    script = PACK_ROOT / "tests" / "comfyui_scripts" / name
    run = subprocess.run([comfy_python(), str(script), str(PACK_ROOT), *map(str, arguments)],
                         capture_output=True, text=True, env=comfy_env(), timeout=300)
    line = next((l for l in run.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_score_video_with_symlinked_reward_model(server, reward_root, tmp_path):
    """models/reward_models holds links (a checkpoint file and a tokenizer folder) to copies on another disk."""
    disk = tmp_path / "other_disk"
    disk.mkdir()
    shutil.copy(reward_root / "HPS_v2.1_compressed.pt", disk / "hps.pt")
    shutil.copytree(reward_root / "CLIP-ViT-H-14-laion2B-s32B-b79K", disk / "tokenizer")
    linked = server.log.parent / "models" / "reward_models"  # ComfyUI's own models/reward_models
    linked.mkdir(parents=True, exist_ok=True)
    (linked / "linked_hps.pt").symlink_to(disk / "hps.pt")
    (linked / "linked_tokenizer").symlink_to(disk / "tokenizer", target_is_directory=True)
    options = server.get("/object_info/VideoRewardModelLoader")["VideoRewardModelLoader"]["input"]["required"]
    assert {"linked_hps.pt", "linked_tokenizer"} <= set(options["checkpoint"][1]["options"])

    def graph(checkpoint: str, encoder: str) -> dict:
        loader = _loader("HPS v2.1")
        loader["inputs"].update(checkpoint=checkpoint, encoder=encoder)
        return {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 2, "color": 0x3080FF}},
            "2": loader,
            "3": {"class_type": "VideoRewardScore", "inputs": {
                "images": ["1", 0], "reward_model": ["2", 0], "prompt": "a blue sky", "frames": "all", "frame_count": 1, "seed": 0}},
        }

    entry = server.run(graph("linked_hps.pt", "linked_tokenizer"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    official = server.run(graph("auto (official name)", "auto (official name)"))
    assert entry["outputs"]["3"]["text"][0] == official["outputs"]["3"]["text"][0]  # the same files, the same scores
    assert entry["outputs"]["3"]["text"][0].startswith("video score:")


def test_nodes_take_symlinked_model_folders(lora_models, tmp_path):
    """Loaders, the training node's paths and the LoRA nodes on a linked model folder, a linked model root, a linked
    LoRA file, a linked input folder and a linked output folder; `..` and absolute names refused."""
    cog, cog_lora = VIDEO_MODELS["CogVideoXFunLoader"]
    easyanimate = VIDEO_MODELS["EasyAnimateLoader"][0]
    models = tmp_path / "models"
    (models / "CogVideoX_Fun").mkdir(parents=True)
    (models / "CogVideoX_Fun" / cog).symlink_to(lora_models / "CogVideoX_Fun" / cog, target_is_directory=True)
    (models / "EasyAnimate").symlink_to(lora_models / "EasyAnimate", target_is_directory=True)
    (models / "loras").mkdir()
    (models / "loras" / "linked.safetensors").symlink_to(lora_models / "loras" / cog_lora)
    (tmp_path / "big_disk").mkdir()
    (models / "loras" / "converted").symlink_to(tmp_path / "big_disk", target_is_directory=True)
    (tmp_path / "prompt_disk").mkdir()
    (tmp_path / "prompt_disk" / "train.txt").write_text("a red ball\n")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "prompt_sets").symlink_to(tmp_path / "prompt_disk", target_is_directory=True)
    (tmp_path / "input" / "direct.jsonl").write_text('{"prompt": "a cat"}\n')
    (tmp_path / "input" / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    (tmp_path / "output").mkdir()
    result = _comfyui_script("node_model_paths.py", tmp_path, cog, easyanimate)
    assert cog in result["cog_choices"] and easyanimate in result["easyanimate_choices"]
    assert {f"CogVideoX-Fun/{cog}", f"EasyAnimate/{easyanimate}"} <= set(result["training_folders"])
    assert result["model_files"] == {"folder": str(models / "CogVideoX_Fun" / cog)}
    assert result["prompt_files"] == ["none", "direct.jsonl", "prompt_sets/train.txt"]
    assert result["cog_parameters"] > 0 and result["easyanimate_parameters"] > 0
    modules = re.search(r"(\d+)/(\d+) modules matched", result["lora_report"])
    assert modules and modules.group(1) == modules.group(2) and int(modules.group(1)) > 0
    assert result["convert"].startswith("wrote ") and (tmp_path / "big_disk" / "cog.safetensors").stat().st_size > 0
    assert result["export"] == str(models / "loras" / "video_reward" / "sub" / "my_lora.safetensors")
    for key in ("export_up", "loader_up", "model_files_up", "convert_up"):
        assert "points outside" in result[key] and "'..' is not allowed" in result[key], (key, result[key])
    assert "must be a name relative to" in result["export_absolute"]
    assert "models/CogVideoX_Fun" in result["loader_up"] and "models/CogVideoX_Fun" in result["model_files_up"]


def test_sequential_offload_keeps_comfyuis_loaded_models_consistent(lora_models, tmp_path):
    """Sequential offload unloads exactly this model's patchers through ComfyUI's model manager: an unrelated loaded
    model stays, nothing is listed twice, and model offload afterwards loads the parts again (same frames)."""
    cog = VIDEO_MODELS["CogVideoXFunLoader"][0]
    (tmp_path / "models" / "CogVideoX_Fun").mkdir(parents=True)
    (tmp_path / "models" / "CogVideoX_Fun" / cog).symlink_to(lora_models / "CogVideoX_Fun" / cog, target_is_directory=True)
    result = _comfyui_script("sequential_offload_models.py", tmp_path, cog)
    roles = result["roles"]
    assert len(roles) == 3 and "transformer" in roles and "vae" in roles
    for state in ("after_model_offload", "after_model_offload_again"):
        assert result[state]["ours"] == roles and result[state]["other"], result[state]
        assert all(size > 0 for size in result[state]["ours_loaded_bytes"].values()), result[state]
        assert result[state]["entries"] == result[state]["distinct"] == len(roles) + 1
    streamed = result["after_sequential_offload"]
    assert streamed["ours"] == [] and streamed["other"] and streamed["entries"] == streamed["distinct"] == 1, streamed
    assert all(size == 0 for size in streamed["ours_loaded_bytes"].values()), streamed
    assert result["sequential_equals_offload"] and result["again_equals_first"]
