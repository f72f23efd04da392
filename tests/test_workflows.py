"""The shipped workflows check out against ComfyUI's and the pack's node schemas, and each API twin is its UI file."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from workflow_check import (
    API_WORKFLOWS, CONTROL, DOWNLOAD_SOURCES, JOB_NODES, NOT_EXPRESSIBLE, TITLE_CHARACTERS, UPLOAD, WORKFLOWS, check_api, check_ui,
    download_entries, load_schemas, metadata_gaps, model_files, needed_models, template_card, ui_to_api, widget_slots,
)

SCHEMAS = load_schemas()
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))


def ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def api(name: str) -> dict:
    return json.loads((API_WORKFLOWS / f"{name}.json").read_text())


def test_every_journey_ships_as_a_ui_file_with_an_api_twin():
    assert len(NAMES) >= 7
    assert sorted(path.stem for path in API_WORKFLOWS.glob("*.json")) == NAMES
    for name in NAMES:
        graph = ui(name)
        assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(graph), name
        assert all("class_type" in node for node in api(name).values()), name


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_checks_out(name):
    assert check_ui(ui(name), SCHEMAS) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_the_ui_graph_and_checks_out(name):
    assert api(name) == ui_to_api(ui(name), SCHEMAS)
    assert check_api(api(name), SCHEMAS) == []


@pytest.mark.parametrize("name", NAMES)
def test_note_says_what_to_download_and_where(name):
    notes = [n["widgets_values"][0] for n in ui(name)["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert len(notes) == 1
    files = needed_models(api(name), SCHEMAS)  # those its widgets pick and the rewards it loads, trains or judges with
    assert files
    for folder, file in files:
        assert file in notes[0] and f"models/{folder}/" in notes[0], (folder, file)


def _nodes(graph: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


@pytest.mark.parametrize("name", NAMES)
def test_seeds_settings(name):
    graph = api(name)
    for pair in _nodes(graph, "WanRewardLoraPair"):
        assert pair["strength_high"] == pair["strength_low"] == 0.7
        assert "high-noise" in pair["lora_high"] and "low-noise" in pair["lora_low"]
    loras = _nodes(graph, "VideoModelRewardLora")
    if len(loras) == 2:  # base vs a LoRA still to train: the base branch takes it at 0, so it too waits for the LoRA
        assert sorted(lora["strength"] for lora in loras) == [0.0, 0.7] and loras[0]["lora"] == loras[1]["lora"]
    else:
        assert all(lora["strength"] == 0.7 for lora in loras)
    for sampler in _nodes(graph, "VideoRewardSampler"):
        assert (sampler["frames"], sampler["width"], sampler["height"], sampler["steps"], sampler["cfg"]) == (49, 512, 512, 50, 7.0)
    samplers = _nodes(graph, "KSamplerAdvanced")
    if samplers:
        high, low = sorted(samplers, key=lambda s: s["start_at_step"])
        assert (high["add_noise"], high["return_with_leftover_noise"], low["add_noise"], low["return_with_leftover_noise"]) == (
            "enable", "enable", "disable", "disable")
        assert high["steps"] == low["steps"] and high["start_at_step"] == 0 and high["end_at_step"] == low["start_at_step"]
        assert low["latent_image"][0] == next(k for k, v in graph.items() if v["inputs"] is high)
    if samplers or _nodes(graph, "VideoRewardSampler"):  # a video is made: it is scored and saved
        assert _nodes(graph, "SaveVideo") and (_nodes(graph, "VideoRewardScore") or _nodes(graph, "VideoRewardRank"))
    for train in _nodes(graph, "TrainRewardLoRA"):  # VideoX-Fun's launch script for the 2B model
        assert (train["family"], train["model_folder"], train["reward"], train["reward_2"]) == (
            "CogVideoX-Fun", "CogVideoX-Fun/CogVideoX-Fun-V1.1-2b-InP", "hps_v2.1", "none")
        assert (train["rank"], train["alpha"], train["width"], train["height"], train["frames"], train["sampling_steps"]) == (
            32, 16.0, 224, 224, 49, 50)
        assert (train["strategy"], train["learning_rate"], train["cfg"], train["seed"], train["decoded_latents"]) == ("last", 1e-5, 6.0, 42, 1)
        assert train["gradient_checkpointing"] is True and train["checkpoint_every"] == 100 and train["shift"] == 0.0  # 0: Wan only
        assert len(train["prompts"].splitlines()) >= 5 and len(train["validation_prompts"].splitlines()) == 2
        # guarded by default: judged by rewards it is not trained on (the judge scores the validation prompts), with
        # early stopping on the judge; the costlier guards stay off
        assert train["judge"] not in ("none", train["reward"], train["reward_2"]) and train["patience"] > 0
        assert (train["judge"], train["judge_2"], train["patience"], train["judge_drop"], train["diversity_seeds"],
                train["drift_weight"], train["dynamism_weight"]) == ("pickscore", "dynamism", 3, 0.0, 0, 0.0, 0.0)
    for pairs in _nodes(graph, "BuildPreferencePairs"):  # VideoDPO's sampling at the seeds' training size
        assert (pairs["family"], pairs["model_folder"], pairs["reward"], pairs["reward_2"]) == (
            "CogVideoX-Fun", "CogVideoX-Fun/CogVideoX-Fun-V1.1-2b-InP", "hps_v2.1", "none")
        assert (pairs["width"], pairs["height"], pairs["frames"], pairs["sampling_steps"], pairs["cfg"], pairs["seed"]) == (256, 256, 49, 50, 6.0, 42)
        assert (pairs["videos_per_prompt"], pairs["pair_rule"], pairs["min_gap"], pairs["alpha"]) == (4, "best_vs_worst", 0.0, 0.0)
        assert len(pairs["prompts"].splitlines()) >= 5
    for dpo in _nodes(graph, "TrainDPOLoRA"):  # trained on the pairs the graph builds, for the model that made them
        assert graph[dpo["dataset"][0]]["class_type"] == "BuildPreferencePairs" and dpo["dataset"][1] == 1
        assert (dpo["family"], dpo["model_folder"], dpo["reward"]) == tuple(graph[dpo["dataset"][0]]["inputs"][k] for k in ("family", "model_folder", "reward"))
        assert (dpo["beta"], dpo["dpo_alpha"], dpo["validation_pairs"], dpo["rank"], dpo["alpha"], dpo["learning_rate"]) == (5000.0, -1.0, 2, 128, 64.0, 1e-5)
        assert (dpo["train_steps"], dpo["checkpoint_every"], dpo["seed"], dpo["gradient_checkpointing"]) == (1000, 100, 42, True)
        assert len(dpo["validation_prompts"].splitlines()) == 2
        assert (dpo["judge"], dpo["judge_2"], dpo["patience"], dpo["judge_drop"], dpo["diversity_seeds"]) == ("none", "none", 0, 0.0, 0)
    jobs = {k: v["class_type"] for k, v in graph.items() if v["class_type"] in JOB_NODES}
    assert sorted(status["job_id"][0] for status in _nodes(graph, "RewardTrainingStatus")) == sorted(jobs)  # one status per job
    previewed = [node["inputs"].get("source") or node["inputs"]["images"] for node in graph.values()
                 if node["class_type"] in ("PreviewAny", "PreviewImage")]
    for status_id, status in ((k, v["inputs"]) for k, v in graph.items() if v["class_type"] == "RewardTrainingStatus"):
        # curves, samples and a trained LoRA's name (a pair job trains none); the status text shows (and stays
        # current) on the node itself, so no second copy of it goes stale between queues
        assert {slot for source, slot in previewed if source == status_id} == (
            {1, 2} if jobs[status["job_id"][0]] == "BuildPreferencePairs" else {1, 2, 3})


def test_widget_order_follows_the_frontend():
    slots = lambda node: [name for name, _ in widget_slots(SCHEMAS[node])]  # noqa: E731
    assert slots("KSamplerAdvanced")[:3] == ["add_noise", "noise_seed", CONTROL]
    assert slots("LoadImage") == ["image", UPLOAD]
    assert slots("PrimitiveInt") == ["value", CONTROL]
    # an INT named seed gets the control widget unless its schema says otherwise (the pack's scoring and training seeds do)
    assert slots("VideoRewardScore") == ["prompt", "frames", "frame_count", "seed"]
    guards = ["judge", "judge_2", "patience", "judge_drop", "diversity_seeds"]  # appended after lora_name
    memory = ["fp8_base", "block_swap", "activation_offload"]  # then the memory options
    assert slots("VideoRewardRank")[-1] == "seed" and slots("TrainRewardLoRA")[-13:] == [
        "seed", "gradient_checkpointing", "lora_name", *guards, "drift_weight", "dynamism_weight", *memory]
    assert slots("TrainDPOLoRA")[-11:] == ["seed", "gradient_checkpointing", "lora_name", *guards, *memory]
    sampler = slots("VideoRewardSampler")
    assert sampler[sampler.index("seed") + 1] == CONTROL and "start_image" not in sampler


def _break(graph: dict, node_type: str, change) -> dict:
    graph = copy.deepcopy(graph)
    change(next(node for node in graph["nodes"] if node["type"] == node_type), graph)
    return graph


def _set_widget(name: str, value):
    def change(node, _graph):
        node["widgets_values"][[slot for slot, _ in widget_slots(SCHEMAS[node["type"]])].index(name)] = value
    return change


@pytest.mark.parametrize("node_type,change,message", [
    ("KSamplerAdvanced", _set_widget("steps", 0), "below the minimum 1"),
    ("EmptyHunyuanLatentVideo", _set_widget("length", 80), "not on the widget's grid (1 + k*4)"),
    ("ModelSamplingSD3", _set_widget("shift", 8.005), "not a multiple of the widget's rounding 0.01"),
    ("KSamplerAdvanced", _set_widget("sampler_name", "euler_fast"), "'euler_fast' not in"),
    ("KSamplerAdvanced", _set_widget(CONTROL, "sometimes"), "control_after_generate 'sometimes'"),
    ("UNETLoader", _set_widget("unet_name", "wan2.2_high.gguf"), "is not a .bin/.ckpt"),
    ("WanRewardLoraPair", _set_widget("strength_high", "0.7"), "'0.7' is not FLOAT"),
    ("VAEDecode", lambda node, graph: node["inputs"][1].update(link=None), "required input 'vae' is not connected"),
    ("VAEDecode", lambda node, graph: node.update(type="VAEDecodeTiled2"), "unknown node type"),
    ("CreateVideo", lambda node, graph: node["widgets_values"].append(3), "2 widget values for widgets ['fps']"),
    ("VAEDecode", lambda node, graph: next(l for l in graph["links"] if l[0] == node["inputs"][1]["link"]).__setitem__(5, "IMAGE"),
     "carries IMAGE (VAE from node"),
])
def test_checker_catches_broken_ui_graphs(node_type, change, message):
    errors = check_ui(_break(ui("Wan2.2 T2V, reward LoRAs"), node_type, change), SCHEMAS)
    assert any(message in error for error in errors), errors


def test_checker_catches_broken_api_graphs():
    graph = api("Base vs reward LoRA, scored")
    sampler = next(k for k, v in graph.items() if v["class_type"] == "VideoRewardSampler")
    score = next(k for k, v in graph.items() if v["class_type"] == "VideoRewardScore")
    broken = copy.deepcopy(graph)
    broken[sampler]["inputs"]["frames"] = 50
    broken[sampler]["inputs"]["cfg"] = 31.0
    broken[score]["inputs"]["images"] = [graph[score]["inputs"]["reward_model"][0], 0]
    del broken[score]["inputs"]["prompt"]
    broken[score]["inputs"]["stride"] = 2
    errors = check_api(broken, SCHEMAS)
    assert len(errors) == 5, errors
    assert any("50 is not on the widget's grid (1 + k*4)" in e for e in errors)
    assert any("31.0 is above the maximum 30.0" in e for e in errors)
    assert any("REWARD_MODEL from node" in e and "into IMAGE" in e for e in errors)
    assert any("required input 'prompt' is missing" in e for e in errors)
    assert any("no input named 'stride'" in e for e in errors)


def test_training_model_folder_is_a_family_folder():
    graph = api("Train a reward LoRA")
    assert model_files(graph, SCHEMAS) == {("CogVideoX_Fun", "CogVideoX-Fun-V1.1-2b-InP")}
    train = next(k for k, v in graph.items() if v["class_type"] == "TrainRewardLoRA")
    broken = copy.deepcopy(graph)
    broken[train]["inputs"]["model_folder"] = "CogVideoX_Fun/CogVideoX-Fun-V1.1-2b-InP"  # the folder, not the family
    assert any("is not '<family>/<folder>'" in e for e in check_api(broken, SCHEMAS))


@pytest.mark.parametrize("name", NAMES)
def test_template_card_has_a_title_description_and_thumbnail(name):
    from PIL import Image

    card = template_card(WORKFLOWS / f"{name}.json")
    assert TITLE_CHARACTERS.fullmatch(card["title"]) and "_" not in card["title"], card  # a title, not a file name
    assert card["description"] == card["title"].replace("-", " ")
    thumbnail = card["thumbnail"]
    assert thumbnail.is_file() and 5_000 < thumbnail.stat().st_size < 60_000, thumbnail
    with Image.open(thumbnail) as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))
        assert len(np.unique(np.asarray(image.convert("L").resize((16, 16))))) > 16  # a picture, not a blank


def test_every_workflow_has_a_thumbnail_card_in_the_script():
    import runpy

    cards = runpy.run_path(str(WORKFLOWS.parent / "scripts" / "workflow_thumbnails.py"))["CARDS"]
    assert sorted(cards) == NAMES
    assert sorted(p.stem for p in WORKFLOWS.glob("*.jpg")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_missing_models_dialog_knows_every_model(name):
    graph = ui(name)
    assert metadata_gaps(graph, SCHEMAS) == []
    for entry in download_entries(graph):
        assert entry["url"].startswith(DOWNLOAD_SOURCES) and entry["directory"] in {f for f, _ in needed_models(api(name), SCHEMAS)}
    without = {k: v for k, v in graph.items() if k != "models"}
    for node in without["nodes"]:
        node.get("properties", {}).pop("models", None)
    assert len(metadata_gaps(without, SCHEMAS)) == len(needed_models(api(name), SCHEMAS) - set(NOT_EXPRESSIBLE))


def test_missing_models_check_counts_folders_and_auto_rewards():
    graph = ui("Train a reward LoRA")
    assert needed_models(api("Train a reward LoRA"), SCHEMAS) == {
        ("CogVideoX_Fun", "CogVideoX-Fun-V1.1-2b-InP"), ("reward_models", "HPS_v2.1_compressed.pt"),
        ("reward_models", "CLIP-ViT-H-14-laion2B-s32B-b79K"), ("reward_models", "PickScore_v1")}  # the judge's; Dynamism has none
    broken = copy.deepcopy(graph)
    broken["models"] = [m for m in graph["models"] if m["directory"] != "CogVideoX_Fun"] + [
        {"name": "CogVideoX-Fun-V1.1-5b-InP/vae/diffusion_pytorch_model.safetensors", "url": "https://huggingface.co/x", "directory": "CogVideoX_Fun"},
        {"name": "HPS_v2.1_compressed.pt", "url": "http://example.com/hps.pt", "directory": "reward_models"}]
    assert metadata_gaps(broken, SCHEMAS) == [
        "download entry {'name': 'HPS_v2.1_compressed.pt', 'url': 'http://example.com/hps.pt', 'directory': 'reward_models'} "
        "needs a name, an https url and a directory",
        "models/CogVideoX_Fun/CogVideoX-Fun-V1.1-2b-InP has no download entry"]
