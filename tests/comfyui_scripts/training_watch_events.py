"""Run with ComfyUI's Python (COMFYUI_PATH set): what Train Reward LoRA's watcher sends the browser while a job runs.

A stand-in job goes queued -> running -> finished; the watcher's messages are recorded by a stand-in PromptServer and
printed as a JSON report on stdout. Usage: python training_watch_events.py <pack root>
"""
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

pack_root = Path(sys.argv[1])
sys.path.insert(0, os.environ["COMFYUI_PATH"])
os.chdir(os.environ["COMFYUI_PATH"])
from comfy.cli_args import args  # noqa: E402

args.cpu = True
sent = []


class Recorder:
    def send_sync(self, event, data, sid=None):
        sent.append({"call": "send_sync", "event": event, "data": data})

    def send_progress_text(self, text, node_id, sid=None):
        sent.append({"call": "send_progress_text", "text": text, "node": node_id})


sys.modules["server"] = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=Recorder()))
spec = importlib.util.spec_from_file_location("video_reward_lora_pack", pack_root / "__init__.py",
                                              submodule_search_locations=[str(pack_root)])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
from video_reward_lora_pack.nodes import training  # noqa: E402


class Job:
    id = "job-a"
    states = iter([{"state": "queued", "reason": "waiting for the GPU"}, {"state": "queued", "reason": "waiting for the GPU"},
                   {"state": "running", "reason": "step 1/2", "step": 1, "max_steps": 2},
                   {"state": "finished", "reason": "trained 2 steps", "step": 2, "max_steps": 2}])

    def status(self):
        return next(self.states)

    def metrics(self):
        return []

    def builds_pairs(self):
        return False


training.time.sleep = lambda seconds: None
training._start_watch(Job(), "7")
for thread in [t for t in training.threading.enumerate() if t.name == "watch job-a"]:
    thread.join(timeout=30)
print("RESULT " + json.dumps({"sent": sent, "watched_after": sorted(training._WATCHED)}))
