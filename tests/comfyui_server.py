"""Start a real ComfyUI server (COMFYUI_PATH) with given packs and model folders, and talk to its HTTP API.

COMFYUI_PYTHON picks the interpreter of ComfyUI's environment (default: this one); COMFYUI_PYTHONPATH is prepended
to its PYTHONPATH (e.g. a torchvision stub on a CPU-only machine).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-video-reward-lora"
TINY_COGVIDEOX = "CogVideoX-Fun-V1.1-2b-InP"  # the tiny CogVideoX-Fun's folder name in models/CogVideoX_Fun


def tiny_cogvideox_models(models: Path, rewards: tuple[str, ...] = ("aesthetic_v2.5",)) -> dict[str, Path]:
    """A tiny CogVideoX-Fun (`TINY_COGVIDEOX`) and tiny `rewards` (none: an empty folder) in ComfyUI model folders
    under `models`; returns those folders by name, for `comfyui_server`."""
    from video_reward_lora.reward.tiny import write_reward_models
    from video_reward_lora.training.families.tiny import write_cogvideox_fun

    write_cogvideox_fun(models / "CogVideoX_Fun" / TINY_COGVIDEOX)
    if rewards:
        write_reward_models(models / "reward_models", rewards)
    else:
        (models / "reward_models").mkdir()
    return {"CogVideoX_Fun": models / "CogVideoX_Fun", "reward_models": models / "reward_models"}


def comfy_python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


def comfy_env() -> dict[str, str]:
    env = dict(os.environ)
    if os.environ.get("COMFYUI_PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ["COMFYUI_PYTHONPATH"], env.get("PYTHONPATH")]))
    return env


def request(base: str, path: str, body: dict | None = None) -> dict:
    """GET (or POST `body` as JSON) and decode the JSON answer; HTTP errors come back as their JSON plus `http_status`."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        return {"http_status": err.code, **json.loads(err.read())}


@dataclass
class Server:
    base: str
    log: Path
    dirs: dict[str, Path]

    def get(self, path: str) -> dict:
        return request(self.base, path)

    def run(self, graph: dict, timeout: float = 120) -> dict:
        """Queue an API-format graph and wait for its history entry (status success or error)."""
        queued = request(self.base, "/prompt", {"prompt": graph})
        if "prompt_id" not in queued:
            raise AssertionError(f"prompt refused: {json.dumps(queued)[:4000]}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = request(self.base, f"/history/{queued['prompt_id']}").get(queued["prompt_id"])
            if entry and entry["status"].get("completed") is not None and entry["status"]["status_str"] in ("success", "error"):
                return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt did not finish in {timeout} s; log tail:\n{self.log.read_text()[-3000:]}")


@contextmanager
def comfyui_server(comfyui: str, work: Path, packs: dict[str, Path], models: dict[str, Path]) -> Iterator[Server]:
    """ComfyUI on CPU with `packs` (name -> folder) as custom nodes and `models` (folder name -> path) as extra
    model paths; every other directory (models, output, temp, input, user) lives under `work`."""
    custom_nodes = work / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    for name, folder in packs.items():
        (custom_nodes / name).symlink_to(folder)
    config = work / "extra_model_paths.yaml"
    lines = [f"  {name}: {path}" for name, path in {"custom_nodes": custom_nodes, **models}.items()]
    config.write_text("tests:\n" + "\n".join(lines) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dirs = {name: work / name for name in ("output", "temp", "input", "user")}
    command = [comfy_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", str(config), "--base-directory", str(work)]
    for name, path in dirs.items():
        path.mkdir(exist_ok=True)
        command += [f"--{name}-directory", str(path)]
    log_path = work / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=comfyui, env=comfy_env(), stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                if process.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited: {log_path.read_text()[-3000:]}")
                try:
                    request(base, "/object_info/VideoRewardScore")
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise TimeoutError(f"ComfyUI did not answer in 120 s: {log_path.read_text()[-3000:]}")
            yield Server(base, log_path, dirs)
        finally:
            process.terminate()
            process.wait(timeout=30)
