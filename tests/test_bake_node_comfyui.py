"""Bake Reward LoRA in a real ComfyUI server (set COMFYUI_PATH; skipped otherwise): ComfyUI-style fp8 checkpoints with
0-dim scales, and `overwrite` for sharded checkpoints."""
from __future__ import annotations

import json
import os

import pytest
from comfyui_server import PACK_NAME, PACK_ROOT, comfyui_server

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set")
NAMES = ["blocks.0.self_attn.q", "blocks.0.cross_attn.k", "head.head"]
LORA = "wan_reward.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """diffusion_models/ with a ComfyUI fp8-scaled checkpoint (0-dim scale_weight and scale_input, the marker) and a
    two-shard bf16 checkpoint with its index; loras/ with a Wan LoRA that fits both."""
    import torch
    from safetensors.torch import save_file

    from video_reward_lora.training.lora.formats import Lora, LoraModule, write_lora

    root = tmp_path_factory.mktemp("bake_models")
    models = root / "diffusion_models"
    models.mkdir()
    generator = torch.Generator().manual_seed(0)
    weights = {f"{n}.weight": torch.randn(16, 12, generator=generator) for n in NAMES}
    fp8 = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, weight in weights.items():
        scale = weight.abs().max() / 448
        fp8[key] = (weight / scale).to(torch.float8_e4m3fn)
        fp8[key.replace(".weight", ".scale_weight")] = scale.reshape(())
        fp8[key.replace(".weight", ".scale_input")] = torch.ones(())
    save_file(fp8, models / "tiny_wan_fp8_scaled.safetensors")
    shards = {"tiny-00001-of-00002.safetensors": list(weights)[:2], "tiny-00002-of-00002.safetensors": list(weights)[2:]}
    for shard, keys in shards.items():
        save_file({k: weights[k].to(torch.bfloat16) for k in keys}, models / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (models / "tiny.safetensors.index.json").write_text(json.dumps(index))
    write_lora(Lora("wan", {n: LoraModule(torch.randn(4, 12, generator=generator), torch.randn(16, 4, generator=generator), 2.0)
                            for n in NAMES}), root / "loras" / LORA, "videox")
    folders = {"diffusion_models": models, "loras": root / "loras"}
    with comfyui_server(COMFYUI, tmp_path_factory.mktemp("comfyui"), {PACK_NAME: PACK_ROOT}, folders) as running:
        yield running


def _bake(server, checkpoint: str, filename: str, overwrite: bool) -> dict:
    return server.run({"1": {"class_type": "BakeRewardLora", "inputs": {
        "checkpoint": checkpoint, "lora": LORA, "strength": 0.7, "filename": filename, "overwrite": overwrite}}})


def _error(entry: dict) -> str:
    return next(m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error")


def test_bake_a_comfyui_fp8_scaled_checkpoint(server):
    import torch
    from safetensors.torch import load_file

    entry = _bake(server, "tiny_wan_fp8_scaled.safetensors", "baked/fp8.safetensors", False)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "merged 3 modules; 3 fp8 weights merged in float32 and re-quantised" in entry["outputs"]["1"]["text"][0]
    baked = load_file(server.dirs["output"] / "baked" / "fp8.safetensors")
    assert {k: (v.dtype, tuple(v.shape)) for k, v in baked.items() if ".scale_" in k} == {
        f"{n}.{s}": (torch.float32, ()) for n in NAMES for s in ("scale_weight", "scale_input")}
    mask = os.umask(0)
    os.umask(mask)  # the server's, inherited from this process
    assert (server.dirs["output"] / "baked" / "fp8.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_sharded_bake_honours_overwrite(server):
    folder = server.dirs["output"] / "baked" / "sharded"
    first = _bake(server, "tiny-00001-of-00002.safetensors", "baked/sharded", False)
    assert first["status"]["status_str"] == "success", first["status"]
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(written) == ["tiny-00001-of-00002.safetensors", "tiny-00002-of-00002.safetensors", "tiny.safetensors.index.json"]
    # (each run differs in an input, or ComfyUI would answer from its cache without running the node)
    refused = _bake(server, "tiny-00002-of-00002.safetensors", "baked/sharded", False)
    assert "already exists" in _error(refused)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    replaced = _bake(server, "tiny-00001-of-00002.safetensors", "baked/sharded", True)
    assert replaced["status"]["status_str"] == "success", replaced["status"]
    again = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(again) == sorted(written) and all(again[k] > written[k] for k in written)
