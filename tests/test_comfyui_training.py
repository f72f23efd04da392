"""Training from a real ComfyUI (COMFYUI_PATH; skipped otherwise): start a job through POST /prompt, watch Training
Status reach finished, then load the trained LoRA in a second graph and sample with it."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from comfyui_server import PACK_NAME, PACK_ROOT, TINY_COGVIDEOX, comfyui_server, tiny_cogvideox_models

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set")
MODEL = TINY_COGVIDEOX


def _train_graph(lora_name: str) -> dict:
    return {
        "1": {"class_type": "TrainRewardLoRA", "inputs": {
            "family": "CogVideoX-Fun", "model_folder": f"CogVideoX-Fun/{MODEL}", "wan_high": "none", "wan_low": "none",
            "wan_vae": "none", "wan_text_encoder": "none", "expert": "low", "reward": "aesthetic_v2.5", "reward_weight": 1.0,
            "reward_2": "none", "reward_2_weight": 1.0, "prompts": "a red ball\na blue sky\na cat in a field",
            "prompts_file": "none", "validation_prompts": "a sunny field", "width": 32, "height": 32, "frames": 9,
            "sampling_steps": 3, "cfg": 6.0, "strategy": "last", "backprop_steps": 1, "decoded_latents": 1,
            "learning_rate": 0.01, "rank": 4, "alpha": 4.0, "train_steps": 4, "checkpoint_every": 2, "seed": 42, "shift": 0.0,
            "gradient_checkpointing": False, "lora_name": lora_name}},
        "2": {"class_type": "RewardTrainingStatus", "inputs": {"job_id": ["1", 0]}},
    }


def test_train_watch_and_load_the_lora(tmp_path):
    folders = tiny_cogvideox_models(tmp_path / "models")
    with comfyui_server(COMFYUI, tmp_path / "comfy", {PACK_NAME: PACK_ROOT}, folders) as server:
        started = server.run(_train_graph("tiny_cog"), timeout=120)
        assert started["status"]["status_str"] == "success", started["status"]
        job_id = re.search(r"training job (\S+) started", started["outputs"]["1"]["text"][0]).group(1)

        deadline, text = time.time() + 240, ""
        while time.time() < deadline:
            watched = server.run({"2": {"class_type": "RewardTrainingStatus", "inputs": {"job_id": job_id}}})
            assert watched["status"]["status_str"] == "success", watched["status"]
            text = watched["outputs"]["2"]["text"][0]
            if "finished" in text.splitlines()[0] or "failed" in text.splitlines()[0]:
                break
            time.sleep(1.0)
        assert text.startswith(f"job {job_id}: finished"), text + server.log.read_text()[-3000:]
        assert "step 4/4" in text and "held-out reward" in text
        lora = next((tmp_path / "comfy" / "models" / "loras" / "video_reward").glob("tiny_cog.safetensors"))
        assert lora.stat().st_size > 0

        again = server.run(_train_graph("tiny_cog"))  # queued again: finds the job, starts no second one
        assert again["status"]["status_str"] == "success" and f"training job {job_id} is finished" in again["outputs"]["1"]["text"][0]
        assert len(list((tmp_path / "comfy" / "output" / "video_reward_jobs").glob("*/job.json"))) == 1
        clash = server.run({**_train_graph("tiny_cog"), "1": {**_train_graph("tiny_cog")["1"], "inputs": {
            **_train_graph("tiny_cog")["1"]["inputs"], "seed": 7}}})
        assert clash["status"]["status_str"] == "error" and "with other settings" in str(clash["status"]["messages"])

        long = _train_graph("tiny_cog_long")
        long["1"]["inputs"].update(train_steps=500, checkpoint_every=1000)
        long_id = re.search(r"training job (\S+) started", server.run(long)["outputs"]["1"]["text"][0]).group(1)
        cancel = {"3": {"class_type": "CancelRewardTraining", "inputs": {"job_id": long_id}}}
        assert "cancel requested" in server.run(cancel)["outputs"]["3"]["text"][0]
        job = tmp_path / "comfy" / "output" / "video_reward_jobs" / long_id
        status = lambda: json.loads((job / "status.json").read_text())  # noqa: E731
        deadline = time.time() + 120
        while status()["state"] != "cancelled" and time.time() < deadline:
            time.sleep(0.5)
        assert status()["state"] == "cancelled" and "checkpoint saved" in status()["reason"]
        resumed = server.run(long)  # queued again: the cancelled job resumes from its checkpoint
        assert resumed["status"]["status_str"] == "success", resumed["status"]
        assert f"training job {long_id} resumed from its last checkpoint" in resumed["outputs"]["1"]["text"][0]
        server.run(cancel)

        use = {
            "1": {"class_type": "CogVideoXFunLoader", "inputs": {"model": MODEL, "precision": "auto"}},
            "2": {"class_type": "VideoModelRewardLora", "inputs": {"model": ["1", 0], "lora": "video_reward/tiny_cog.safetensors", "strength": 0.7}},
            "3": {"class_type": "VideoRewardSampler", "inputs": {
                "model": ["2", 0], "prompt": "a red ball", "negative_prompt": "", "width": 32, "height": 32, "frames": 9,
                "steps": 3, "cfg": 6.0, "seed": 43, "memory": "model offload"}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        }
        used = server.run(use, timeout=120)
        assert used["status"]["status_str"] == "success", used["status"]
        assert "video_reward/tiny_cog.safetensors" in server.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]


def test_bad_settings_are_refused_when_queued(tmp_path):
    """POST /prompt answers 400 with a node error naming the setting (frames not 4k+1, no prompts, a width the model
    cannot take, a value beyond the widget's bounds), also when another input is linked from a node, and no job folder
    is written."""
    from comfyui_server import request

    folders = tiny_cogvideox_models(tmp_path / "models", rewards=())
    linked = {"9": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a red ball"}}}
    cases = [({"frames": 50}, {}, "frames", "frames must be 4k+1 (e.g. 49), got 50"),
             ({"prompts": " \n "}, {}, "prompts", "write prompts"),
             ({"frames": 50, "prompts": ["9", 0]}, linked, "frames", "got 50"),
             ({"width": 40}, {}, "width", "width and height must be positive multiples of 16, got 40x32"),
             ({"rank": 5000}, {}, "rank", "rank must be between 1 and 1024, got 5000")]
    with comfyui_server(COMFYUI, tmp_path / "comfy", {PACK_NAME: PACK_ROOT}, folders) as server:
        for change, extra, setting, message in cases:
            graph = _train_graph("refused")
            graph["1"]["inputs"].update(change)
            answer = request(server.base, "/prompt", {"prompt": {**graph, **extra}})
            assert answer.get("http_status") == 400, answer
            errors = answer["node_errors"]["1"]["errors"]
            assert any(e["extra_info"]["input_name"] == setting and message in e["details"] for e in errors), errors
        assert not (tmp_path / "comfy" / "output" / "video_reward_jobs").exists()
