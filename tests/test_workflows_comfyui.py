"""Every shipped workflow runs in a real ComfyUI (COMFYUI_PATH set; skipped otherwise) on the CPU.

Tiny models are written under the official file names the workflows pick; each run shrinks sizes and steps with
widget overrides, leaving the graph as shipped. Also: the committed pack schema dump equals the live schemas, the
UI files appear in ComfyUI's template list, and comfy-cli (`comfy`, from COMFY_CLI or PATH) converts and runs the UI files.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from random_lora import linear_shapes, random_lora

from comfyui_server import PACK_NAME, PACK_ROOT, comfy_env, comfy_python, comfyui_server
from workflow_check import API_WORKFLOWS, WORKFLOWS, load_schemas, model_files, needed_models, set_widgets

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set")
SCHEMAS = load_schemas()
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
SCRIPTS = PACK_ROOT / "tests" / "comfyui_scripts"
WAN_LORAS = {"high": "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors", "low": "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors"}
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VIDEO_MODELS = {  # folder/name: (writer, reward LoRA name)
    "CogVideoX_Fun/CogVideoX-Fun-V1.1-5b-InP": ("write_cogvideox_fun", "CogVideoX-Fun-V1.1-5b-InP-HPS2.1.safetensors"),
    "EasyAnimate/EasyAnimateV5-12b-zh-InP": ("write_easyanimate", "EasyAnimateV5-12b-zh-InP-HPS2.1.safetensors"),
}
TRAINED_MODEL = "CogVideoX_Fun/CogVideoX-Fun-V1.1-2b-InP"  # the training workflow's model (2B style: no RoPE)
FOLDERS = ("diffusion_models", "vae", "text_encoders", "loras", "CogVideoX_Fun", "EasyAnimate")


def _random_lora(family: str, shapes: dict[str, tuple[int, int]], path: Path, seed: int, scale: float = 0.1) -> None:
    """A rank-4 reward LoRA in the published format over the given modules (name: (out, in))."""
    import torch

    from video_reward_lora.training.lora.formats import write_lora

    lora = random_lora(family, shapes, torch.Generator().manual_seed(seed), rank=4, down_scale=1.0, up_scale=scale)
    write_lora(lora, path, "videox")


def _write_wan(models: Path) -> None:
    """Both Wan2.2 A14B pairs (T2V, Fun InP) and the VAE as Comfy-Org ships them (fp8 scaled), the text encoder in the
    tiny umt5 shape the test pack tiny_umt5 makes ComfyUI build, and reward LoRAs for the experts (no FFN, as published)."""
    import torch
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    from video_reward_lora.training.families.tiny_wan import expert_shapes, spiece_model, write_wan22

    for fun_inpaint in (False, True):
        write_wan22(models, fun_inpaint=fun_inpaint, fp8_scaled=True)
    config = json.loads((SCRIPTS / "tiny_umt5" / "config.json").read_text())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=config["vocab_size"], d_model=config["d_model"], d_kv=config["d_kv"], d_ff=config["d_ff"],
            num_layers=config["num_layers"], num_heads=config["num_heads"], feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    state = {k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}  # ComfyUI keeps `shared` only
    save_file({**state, "spiece_model": torch.frombuffer(bytearray(spiece_model()), dtype=torch.uint8)}, models / "text_encoders" / UMT5)
    linears = {key.removesuffix(".weight"): shape for key, shape in expert_shapes(16).items()
               if key.endswith(".weight") and len(shape) == 2 and ".ffn." not in key}
    for seed, name in enumerate(WAN_LORAS.values()):
        _random_lora("wan", linears, models / "loras" / name, seed)


def _write_video_model(models: Path, relative: str, writer: str, lora_name: str) -> None:
    """A tiny pack-loaded model folder under its official name, and a reward LoRA covering all its Linear layers."""
    from video_reward_lora.training.families import tiny
    from video_reward_lora.training.families.cogvideox import CogVideoXFun
    from video_reward_lora.training.families.easyanimate import EasyAnimate
    folder = models / relative
    if writer == "write_cogvideox_fun":
        family = CogVideoXFun.load(tiny.write_cogvideox_fun(folder, rotary=True))  # the 5B style
    else:
        family = EasyAnimate.load(tiny.write_easyanimate(folder))
    _random_lora(family.lora_family, linear_shapes(family.transformer, family.lora_family), models / "loras" / lora_name, 0,
                 scale=0.2)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workflow_models")
    _write_wan(root)
    for relative, (writer, lora) in VIDEO_MODELS.items():
        _write_video_model(root, relative, writer, lora)
    from video_reward_lora.training.families.tiny import write_cogvideox_fun

    write_cogvideox_fun(root / TRAINED_MODEL)
    return root


@pytest.fixture(scope="module")
def server(models: Path, reward_root: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("comfyui_workflows")
    folders = {name: models / name for name in FOLDERS}
    with comfyui_server(COMFYUI, work, {PACK_NAME: PACK_ROOT, "tiny_umt5": SCRIPTS / "tiny_umt5"},
                        {**folders, "reward_models": reward_root}) as running:
        from PIL import Image

        Image.new("RGB", (48, 40), (240, 200, 60)).save(running.dirs["input"] / "example.png")
        yield running


def tiny_overrides(api: dict) -> dict[str, dict]:
    """Widget values that make a workflow CPU-sized: 32x32 pixels, 5 (Wan) or 9 frames, 4 or 3 steps, 2 candidates,
    2 videos per prompt, 3 training steps (DPO's at a rate that moves its zero-started LoRA in them)."""
    frames_from = {link[0] for node in api.values() if node["class_type"] == "EmptyHunyuanLatentVideo"
                   for name, link in node["inputs"].items() if name == "length" and isinstance(link, list)}
    changes: dict[str, dict] = {}
    for node_id, node in api.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "EmptyHunyuanLatentVideo":
            changes[node_id] = {"width": 32, "height": 32, "length": 5, "batch_size": min(inputs["batch_size"], 2)}
        elif kind == "WanFunInpaintToVideo":
            changes[node_id] = {"width": 32, "height": 32, "length": 5}
        elif kind == "KSamplerAdvanced":
            changes[node_id] = {"steps": 4, **({"end_at_step": 2} if inputs["start_at_step"] == 0 else {"start_at_step": 2})}
        elif kind == "VideoRewardSampler":
            changes[node_id] = {"width": 32, "height": 32, "frames": 9, "steps": 3}
        elif kind == "TrainRewardLoRA":
            changes[node_id] = {"width": 32, "height": 32, "frames": 9, "sampling_steps": 3, "train_steps": 3, "checkpoint_every": 2}
        elif kind == "BuildPreferencePairs":
            changes[node_id] = {"width": 32, "height": 32, "frames": 9, "sampling_steps": 3, "videos_per_prompt": 2}
        elif kind == "TrainDPOLoRA":  # its clips' size is the dataset's
            changes[node_id] = {"sampling_steps": 3, "train_steps": 3, "checkpoint_every": 2, "learning_rate": 0.003}
        elif kind == "VideoRewardRank" and not isinstance(inputs["frames_per_video"], list):
            changes[node_id] = {"frames_per_video": 5}
        elif node_id in frames_from:
            changes[node_id] = {"value": 5}
    return changes


def mp4_video(path: Path) -> tuple[int, int, int]:
    """(width, height, frames) of a single-track mp4: tkhd's 16.16 width/height, stsz's sample count."""
    data = path.read_bytes()
    tkhd = data.index(b"tkhd")
    size = struct.unpack(">I", data[tkhd - 4:tkhd])[0]
    width, height = struct.unpack(">II", data[tkhd - 4 + size - 8:tkhd - 4 + size])
    stsz = data.index(b"stsz")
    frames = struct.unpack(">I", data[stsz + 12:stsz + 16])[0]
    return width >> 16, height >> 16, frames


def expected_video(name: str, api: dict) -> tuple[int, int, int]:
    """(width, height, frames) of the saved video at the tiny sizes (the comparison stitches two with 16 px between)."""
    frames = 5 if any(node["class_type"] == "KSamplerAdvanced" for node in api.values()) else 9
    stitched = any(node["class_type"] == "ImageStitch" for node in api.values())  # base | LoRA, 16 px between
    return (32 * 2 + 16 if stitched else 32), 32, frames


def _outputs(entry: dict, api: dict, class_type: str) -> list[dict]:
    return [entry["outputs"][node_id] for node_id, node in api.items() if node["class_type"] == class_type]


@pytest.fixture(scope="module", params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    """One workflow; module scope groups each workflow's tests, so the comfy-cli run reuses the API run's cached nodes."""
    return request.param


def _node_id(api: dict, class_type: str) -> str | None:
    return next((node_id for node_id, node in api.items() if node["class_type"] == class_type), None)


STARTERS = {"TrainRewardLoRA": "training job", "BuildPreferencePairs": "preference-pair job"}  # what a first queue starts
COMPARED = ("VideoRewardScore", "SaveVideo")  # the outputs of a comparison that waits for the LoRA a graph trains


def _queue_until_ended(server, graph: dict, entry: dict, status_id: str, job_id: str | None = None) -> tuple[dict, str]:
    """Queue a graph again until Training Status `status_id` says its job ended, as a user refreshes it (the status
    is blocked, so absent, until its job exists); meanwhile nothing of a comparison runs. The last run and the job."""
    waiting = [node_id for node_id, node in graph.items() if node["class_type"] in COMPARED]
    deadline = time.time() + 300
    while True:
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
        if status_id in entry["outputs"]:
            text = entry["outputs"][status_id]["text"][0]
            job_id = job_id or text.split(":")[0].removeprefix("job ")
            assert text.startswith(f"job {job_id}: "), text
            if text.splitlines()[0].removeprefix(f"job {job_id}: ").split()[0] not in ("queued", "running"):
                return entry, job_id
        assert not set(waiting) & set(entry["outputs"]), entry["outputs"]
        assert time.time() < deadline, json.dumps(entry["outputs"])[-2000:] + server.log.read_text()[-3000:]
        time.sleep(1.0)
        entry = server.run(graph)


def _status_of(graph: dict, job_node: str) -> str:
    return next(k for k, v in graph.items() if v["class_type"] == "RewardTrainingStatus" and v["inputs"]["job_id"][0] == job_node)


def watch_training(server, graph: dict, entry: dict, job_id: str | None = None) -> dict:
    """Queue a training graph again until its jobs end, as a user does: a preference-pair job first (its dataset must
    be in models/preference_datasets), then the LoRA's; each must finish, with no second job for its result, and the
    LoRA must be in the loras list under video_reward/. The last run."""
    jobs = server.dirs["output"] / "video_reward_jobs"
    pairs_id = _node_id(graph, "BuildPreferencePairs")
    if pairs_id:
        entry, job_id = _queue_until_ended(server, graph, entry, _status_of(graph, pairs_id), job_id)
        text = entry["outputs"][_status_of(graph, pairs_id)]["text"][0]
        pairs = graph[pairs_id]["inputs"]
        prompts = len(pairs["prompts"].splitlines())  # best_vs_worst: one pair each
        made = pairs["videos_per_prompt"] * prompts
        assert text.startswith(f"job {job_id}: finished") and f"videos made: {made}/{made}" in text and f"({prompts} pairs)" in text, text
        dataset = server.dirs["output"].parent / "models" / "preference_datasets" / pairs["dataset_name"]
        assert len(json.loads((dataset / "pair.json").read_text())) == prompts
        assert json.loads((jobs / job_id / "job.json").read_text())["export_to"] == str(dataset)
        job_id = None  # the LoRA's job is found on its Training Status
    trainer = _node_id(graph, "TrainRewardLoRA") or _node_id(graph, "TrainDPOLoRA")
    status_id, lora_id = _status_of(graph, trainer), _node_id(graph, "PreviewAny")
    lora_name = graph[trainer]["inputs"]["lora_name"]
    entry, job_id = _queue_until_ended(server, graph, entry, status_id, job_id)
    text = entry["outputs"][status_id]["text"][0]
    assert text.startswith(f"job {job_id}: finished") and "step 3/3" in text and "held-out reward" in text, text
    if graph[trainer]["inputs"]["judge"] != "none":  # the job's LoRA is the judge's best evaluation; the status says which
        best = re.search(r"^judge: \S+ at the start, best \S+ at step (\d+), \S+ now$", text, re.MULTILINE)
        assert best and f"the LoRA is step {best.group(1)}'s, the judge's best" in text, text
    assert entry["outputs"][lora_id]["text"][0] == f"video_reward/{lora_name}.safetensors"  # the Trained LoRA node
    assert [p.parent.name for p in jobs.glob("*/job.json")
            if json.loads(p.read_text())["export_to"].endswith(f"/{lora_name}.safetensors")] == [job_id]
    lora = Path(json.loads((jobs / job_id / "status.json").read_text())["lora"])
    assert lora.is_file() and lora.stat().st_size > 0 and lora.parent.name == "video_reward"
    listed = server.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    assert f"video_reward/{lora_name}.safetensors" in listed
    return entry


def check_videos(server, name: str, api: dict, entry: dict) -> None:
    """The run saved one video at the tiny size and scored (or ranked) what it made."""
    saved = [server.dirs["output"] / item["subfolder"] / item["filename"]
             for out in _outputs(entry, api, "SaveVideo") for item in out["images"]]
    assert len(saved) == 1 and saved[0].suffix == ".mp4"
    assert mp4_video(saved[0]) == expected_video(name, api)
    frames = expected_video(name, api)[2]
    scores = [out["text"][0] for out in _outputs(entry, api, "VideoRewardScore")]
    for text in scores:
        assert text.startswith("video score:") and text.count("frame ") == frames, text
    if _node_id(api, "ImageStitch"):
        assert len(scores) == 2 and scores[0] != scores[1]
    for out in _outputs(entry, api, "VideoRewardRank"):
        ranking = out["text"][0].splitlines()
        assert len(ranking) == 2 and ranking[0].startswith("#1: video "), ranking


def test_api_workflow_runs(server, models, reward_root, name):
    api = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
    roots = {**{folder: models / folder for folder in FOLDERS}, "reward_models": reward_root}
    provided = {(folder, str(p.relative_to(root))) for folder, root in roots.items() for p in root.glob("*")}
    # every file the graph picks or loads (its rewards, a judge's PickScore too) is there under its official name
    assert (model_files(api, SCHEMAS) | needed_models(api, SCHEMAS)) - provided <= {("input", "example.png")}
    graph = set_widgets(api, SCHEMAS, tiny_overrides(api))
    entry = server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    starter = next((kind for kind in STARTERS if _node_id(api, kind)), None)
    if starter:
        started = re.fullmatch(rf"{STARTERS[starter]} (\S+) started\nits progress and results: Training Status",
                               entry["outputs"][_node_id(api, starter)]["text"][0])
        assert started, entry["outputs"]
        # the job id, by which web/video_reward.js matches the live status updates to this node's latest job
        assert entry["outputs"][_node_id(api, starter)]["video_reward_job"] == [started.group(1)]
        entry = watch_training(server, graph, entry, started.group(1))
        if not _node_id(api, "SaveVideo"):
            return
    check_videos(server, name, api, entry)


def test_committed_pack_schemas_are_live():
    from comfyui_scripts.dump_pack_object_info import DUMP, dump_text, live_pack_schemas

    assert dump_text(live_pack_schemas(COMFYUI)) == DUMP.read_text(), (
        "tests/data/pack_object_info.json is stale: run tests/comfyui_scripts/dump_pack_object_info.py")


def _fetch(server, path: str) -> tuple[str, bytes]:
    """(content type, body) of a GET, the path quoted as a browser quotes it."""
    with urllib.request.urlopen(server.base + urllib.parse.quote(path), timeout=60) as response:
        return response.headers.get_content_type(), response.read()


def test_ui_workflows_are_comfyui_templates_with_thumbnails(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed[PACK_NAME]) == NAMES
    for name in NAMES:
        kind, served = _fetch(server, f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert json.loads(served) == json.loads((WORKFLOWS / f"{name}.json").read_text())
        kind, thumbnail = _fetch(server, f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")  # as frontend 1.35.9 asks
        assert kind == "image/jpeg" and thumbnail == (WORKFLOWS / f"{name}.jpg").read_bytes()


def test_training_progress_goes_to_training_status():
    """The watcher sends each new state of the job once, as the `describe` text Training Status shows, with the job
    and the Train Reward LoRA node (web/video_reward.js shows it on the Training Status nodes that watch that job);
    nothing goes under Train Reward LoRA itself."""
    run = subprocess.run([comfy_python(), str(SCRIPTS / "training_watch_events.py"), str(PACK_ROOT)],
                         capture_output=True, text=True, env=comfy_env(), timeout=300)
    line = next((l for l in run.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(line.removeprefix("RESULT "))
    assert [(m["call"], m["event"], m["data"]["job"], m["data"]["node"], m["data"]["state"]) for m in report["sent"]] == [
        ("send_sync", "video_reward.training", "job-a", "7", state) for state in ("queued", "running", "finished")]
    assert [m["data"]["text"] for m in report["sent"]] == [
        "job job-a: queued (waiting for the GPU)", "job job-a: running (step 1/2)\nstep 1/2", "job job-a: finished (trained 2 steps)\nstep 2/2"]
    assert report["watched_after"] == []


def test_frontend_extension_is_served(server):
    script = f"/extensions/{PACK_NAME}/video_reward.js"
    assert script in server.get("/extensions")
    kind, body = _fetch(server, script)
    assert kind in ("application/javascript", "text/javascript") and body == (PACK_ROOT / "web" / "video_reward.js").read_bytes()


def _comfy_cli() -> str | None:
    return os.environ.get("COMFY_CLI") or shutil.which("comfy")


def _comfy(server, *args: str) -> subprocess.CompletedProcess:
    host, port = server.base.removeprefix("http://").split(":")
    home = server.dirs["user"] / "comfy-cli-home"  # comfy-cli keeps its settings under HOME
    env = {**os.environ, "HOME": str(home), "COMFY_NO_WATCH": "1"}
    subprocess.run([_comfy_cli(), "--skip-prompt", "tracking", "disable"], capture_output=True, env=env, timeout=60)
    return subprocess.run([_comfy_cli(), "--skip-prompt", "run", "--host", host, "--port", port, *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(not _comfy_cli(), reason="comfy-cli is not installed (set COMFY_CLI or put `comfy` on PATH)")
def test_comfy_cli_converts_and_runs_ui_workflow(server, name, tmp_path):
    """comfy-cli turns the UI file into exactly the API twin, and runs it (tiny sizes, its own output name) to success."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
    printed = _comfy(server, "--workflow", str(WORKFLOWS / f"{name}.json"), "--print-prompt", "--json")
    preview = next((json.loads(line) for line in printed.stdout.splitlines() if '"prompt_preview"' in line), None)
    assert preview is not None, printed.stdout[-2000:] + printed.stderr[-2000:]
    assert preview["prompt"] == api
    changes = tiny_overrides(api)
    for node_id, node in api.items():
        if node["class_type"] == "SaveVideo":
            changes[node_id] = {"filename_prefix": f"cli/{name}"}
        elif node["class_type"] in ("TrainRewardLoRA", "TrainDPOLoRA"):
            changes[node_id]["lora_name"] = "cli_" + re.sub(r"\W+", "_", name)
        elif node["class_type"] == "BuildPreferencePairs":
            changes[node_id]["dataset_name"] = "cli_" + re.sub(r"\W+", "_", name)
    tiny = tmp_path / f"{name}.json"
    tiny.write_text(json.dumps(set_widgets(ui, SCHEMAS, changes)))
    done = _comfy(server, "--workflow", str(tiny), "--wait", "--timeout", "600", "--json")
    envelope = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and envelope["ok"], done.stdout[-3000:] + done.stderr[-3000:]
    if any(_node_id(api, kind) for kind in STARTERS):  # the jobs run on in the background: queue the same graph until they end
        graph = set_widgets(api, SCHEMAS, changes)
        watch_training(server, graph, server.run(graph))
        if not _node_id(api, "SaveVideo"):
            return
    videos = list((server.dirs["output"] / "cli").glob(f"{name}_*.mp4"))
    assert len(videos) == 1 and mp4_video(videos[0]) == expected_video(name, api)
