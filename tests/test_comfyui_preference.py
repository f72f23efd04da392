"""The VideoDPO pipeline from a real ComfyUI (COMFYUI_PATH; skipped otherwise): one graph builds preference pairs and
trains a DPO LoRA on them; Train DPO LoRA waits (silently) for the pairs, queueing the graph again starts it once
the dataset exists, and Training Status follows both jobs; bad settings are refused when the graph is queued."""
from __future__ import annotations

import json
import os
import time

import pytest

from comfyui_server import PACK_NAME, PACK_ROOT, TINY_COGVIDEOX, comfyui_server, request, tiny_cogvideox_models

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set")
MODEL = TINY_COGVIDEOX
MODEL_INPUTS = {"family": "CogVideoX-Fun", "model_folder": f"CogVideoX-Fun/{MODEL}", "wan_high": "none", "wan_low": "none",
                "wan_vae": "none", "wan_text_encoder": "none", "reward": "aesthetic_v2.5", "reward_weight": 1.0,
                "reward_2": "none", "reward_2_weight": 1.0}


def _graph(dataset_name: str = "tiny_pairs", **changes) -> dict:
    pairs = {**MODEL_INPUTS, "prompts": "a red ball\na blue sky\na cat in a field\na dog on the field", "prompts_file": "none",
             "width": 32, "height": 32, "frames": 9, "sampling_steps": 2, "cfg": 3.0, "shift": 0.0, "videos_per_prompt": 2,
             "pair_rule": "best_vs_worst", "min_gap": 0.0, "alpha": 0.0, "seed": 7, "dataset_name": dataset_name}
    dpo = {**MODEL_INPUTS, "dataset": ["1", 1], "expert": "low", "beta": 5000.0, "dpo_alpha": -1.0, "validation_pairs": 1,
           "validation_prompts": "a sunny field", "sampling_steps": 2, "cfg": 3.0, "shift": 0.0, "learning_rate": 0.003,
           "rank": 4, "alpha": 4.0, "train_steps": 3, "checkpoint_every": 10, "seed": 1, "gradient_checkpointing": False,
           "lora_name": "tiny_dpo"}
    graph = {
        "1": {"class_type": "BuildPreferencePairs", "inputs": pairs},
        "2": {"class_type": "RewardTrainingStatus", "inputs": {"job_id": ["1", 0]}},
        "3": {"class_type": "TrainDPOLoRA", "inputs": dpo},
        "4": {"class_type": "RewardTrainingStatus", "inputs": {"job_id": ["3", 0]}},
    }
    for key, value in changes.items():
        node, name = key.split(".")
        graph[node]["inputs"][name] = value
    return graph


def _state(entry: dict, node: str) -> str:
    return entry["outputs"][node]["text"][0].splitlines()[0].split(": ")[1].split()[0]


def test_build_pairs_then_train_dpo_in_one_graph(tmp_path):
    folders = tiny_cogvideox_models(tmp_path / "models")
    with comfyui_server(COMFYUI, tmp_path / "comfy", {PACK_NAME: PACK_ROOT}, folders) as server:
        refused = [({"1.dataset_name": "../escape"}, "1", "dataset_name"), ({"1.videos_per_prompt": 1}, "1", "videos_per_prompt"),
                   ({"3.dataset": "none"}, "3", "choose a preference dataset"),
                   ({"3.dataset": "none", "3.beta": 0.5}, "3", "beta must be between")]
        for changes, node, message in refused:
            graph = _graph(**changes)
            if node == "3":  # ComfyUI runs the valid part of a graph: Train DPO LoRA's alone
                graph = {key: graph[key] for key in ("3", "4")}
            response = request(server.base, "/prompt", {"prompt": graph})
            assert response.get("http_status") == 400 and message in json.dumps(response["node_errors"][node]), response
        datasets = tmp_path / "comfy" / "models" / "preference_datasets"
        assert not datasets.exists() or not any(datasets.iterdir())  # nothing written by a refused graph

        first = server.run(_graph(), timeout=120)
        assert first["status"]["status_str"] == "success", first["status"]
        assert "3" not in first["outputs"] and "4" not in first["outputs"]  # DPO waits for the dataset, no error
        deadline = time.time() + 240
        entry = first
        while "4" not in entry["outputs"] or _state(entry, "4") in ("queued", "running"):
            assert time.time() < deadline, json.dumps(entry["outputs"])[-2000:] + server.log.read_text()[-3000:]
            time.sleep(1.0)
            entry = server.run(_graph())
            assert entry["status"]["status_str"] == "success", entry["status"]
        pairs_text, dpo_text = entry["outputs"]["2"]["text"][0], entry["outputs"]["4"]["text"][0]
        assert _state(entry, "2") == "finished" and "videos made: 8/8" in pairs_text and "(4 pairs)" in pairs_text, pairs_text
        assert _state(entry, "4") == "finished" and "step 3/3" in dpo_text, dpo_text + server.log.read_text()[-3000:]
        assert "held-out implicit accuracy" in dpo_text and "held-out reward" in dpo_text, dpo_text
        data = datasets / "tiny_pairs"
        assert len(json.loads((data / "pair.json").read_text())) == 4 and len(list((data / "clips").glob("*.mp4"))) == 8
        lora = tmp_path / "comfy" / "models" / "loras" / "video_reward" / "tiny_dpo.safetensors"
        assert lora.stat().st_size > 0
        listed = server.get("/object_info/TrainDPOLoRA")["TrainDPOLoRA"]["input"]["required"]["dataset"][1]["options"]
        assert "tiny_pairs" in listed
