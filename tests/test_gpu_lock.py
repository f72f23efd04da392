"""The machine-wide GPU lock (training.jobs.gpu_lock): first come, first served, with each waiting job's place in line;
jobs from different jobs folders and launch paths (command line, node, accelerate launch) never train at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.jobs import gpu_lock, jobs
from video_reward_lora.training.config import TrainConfig
from video_reward_lora.training.families.tiny import write_cogvideox_fun
from video_reward_lora.training.jobs.jobs import Job, create_job


def _until(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Waiter(threading.Thread):
    """acquire() for the job folder `name` in a thread, recording each (place, holder) it hears."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True)
        self.job, self.heard, self.cancel, self.lock = Path(name), [], threading.Event(), None
        self.start()
        _until(lambda: self.heard, 10, f"{name} to queue")

    def run(self) -> None:
        self.lock = gpu_lock.acquire(self.job, self.cancel.is_set, lambda *place: self.heard.append(place), poll=0.05)


def test_first_come_first_served_with_places_in_line(gpu_lock_folder):
    dead = gpu_lock_folder / f"{1:020d}-1{gpu_lock.TICKET}"  # the oldest ticket, of a process that is gone
    dead.write_text(json.dumps({"job": "gone", "pid": 2**22 + 17, "started": 0.0}))
    first = gpu_lock.acquire(Path("jobs/a"), lambda: False)
    assert first is not None and gpu_lock.holder() == "jobs/a"
    b, c, d = Waiter("jobs/b"), Waiter("jobs/c"), Waiter("jobs/d")
    assert [b.heard[-1], c.heard[-1], d.heard[-1]] == [(1, "jobs/a"), (2, "jobs/a"), (3, "jobs/a")]
    assert not dead.exists()  # a dead process's ticket neither counts nor stays
    c.cancel.set()
    c.join(5)
    assert c.lock is None and not c.is_alive()
    _until(lambda: d.heard[-1] == (2, "jobs/a"), 5, "d to move up")
    first.release()
    b.join(5)
    assert b.lock is not None and gpu_lock.holder() == "jobs/b" and d.lock is None
    _until(lambda: d.heard[-1] == (1, "jobs/b"), 5, "d to be next")
    b.lock.release()
    d.join(5)
    assert d.lock is not None and gpu_lock.holder() == "jobs/d"
    d.lock.release()
    assert gpu_lock.holder() is None and not list(gpu_lock_folder.glob(f"*{gpu_lock.TICKET}"))
    assert [gpu_lock.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 102)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "102nd"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> TrainConfig:
    root = tmp_path_factory.mktemp("models")
    return TrainConfig.from_dict(dict(
        family="cogvideox", model={"folder": str(write_cogvideox_fun(root / "CogVideoX-Fun-V1.1-2b-InP"))},
        rewards=[{"key": "aesthetic_v2.5"}], reward_roots=[str(write_reward_models(root / "reward_models", ("aesthetic_v2.5",)))],
        prompts=["a red ball", "a blue sky"], height=32, width=32, frames=9, steps=2, rank=4, alpha=4.0, max_steps=3,
        checkpoint_every=3, sample_every=3, gradient_checkpointing=False,
    ))


def _watch(*watched: Job, until) -> list[tuple[str, ...]]:
    """The distinct tuples of the jobs' states seen (polled every 20 ms) until `until()`."""
    seen: list[tuple[str, ...]] = []
    deadline = time.time() + 240
    while not until():
        assert time.time() < deadline, [job.log.read_text()[-2000:] for job in watched if job.log.is_file()]
        states = tuple(job.status().get("state", "") for job in watched)
        if not seen or seen[-1] != states:
            seen.append(states)
        time.sleep(0.02)
    return seen


def test_jobs_of_the_cli_and_the_node_take_turns(config, tmp_path):
    """A foreground `cli run` into one folder and a node-style background job in another jobs root: the second waits,
    saying where it stands, and starts only once the first has ended (cancelled here, to keep the test short)."""
    (tmp_path / "train.json").write_text(config.to_json().replace('"max_steps": 3', '"max_steps": 1000'))
    cli = Job(tmp_path / "cli_runs" / "first")
    command = [sys.executable, "-m", "video_reward_lora.training.cli", "run", "--config", str(tmp_path / "train.json"),
               "--output", str(cli.path)]
    foreground = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    _until(lambda: (cli.path / "status.json").is_file() and cli.status()["state"] == "running", what="the CLI job")
    node = create_job(tmp_path / "comfyui_output" / "video_reward_jobs", config, name="node")
    jobs.start(node)
    seen = _watch(cli, node, until=lambda: node.status().get("reason", "").endswith(f"behind job {cli.id}"))
    assert node.status()["state"] == "queued" and node.status()["reason"] == f"1st in line for the GPU behind job {cli.id}"
    assert cli.status()["state"] == "running" and cli.metrics()  # the first trains while the second waits
    cli.request_cancel()
    seen += _watch(cli, node, until=lambda: node.status()["state"] not in jobs.ACTIVE)
    output = foreground.communicate(timeout=60)[0]
    assert foreground.returncode == 0, output[-3000:]
    assert node.status()["state"] == "finished", node.log.read_text()[-2000:]
    assert ("running", "running") not in seen, seen
    first_run = next(states for states in seen if states[1] == "running")  # the moment the second job got the GPU
    assert seen[0] == ("running", "queued") and first_run[0] == "cancelled", seen


def _launch(config: Path, output: Path) -> subprocess.Popen:
    """`accelerate launch` of the CLI's foreground run with 2 CPU processes, in the background."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return subprocess.Popen(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "video_reward_lora.training.cli", "run", "--config", str(config), "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_multi_process_launch_queues_for_the_lock(config, tmp_path):
    """Under accelerate launch (2 CPU processes) the job waits for the machine's lock like any other: cancelled while
    queued, every process ends; launched again, it trains once the lock is free."""
    (tmp_path / "train.json").write_text(config.to_json())
    output = Job(tmp_path / "ddp")

    def queued() -> bool:
        return (output.path / "status.json").is_file() and output.status()["reason"] == "1st in line for the GPU behind job busy"

    holding = gpu_lock.acquire(tmp_path / "elsewhere" / "busy", lambda: False)
    try:
        launch = _launch(tmp_path / "train.json", output.path)
        _until(queued, what="the launch to queue")
        output.request_cancel()
        printed = launch.communicate(timeout=120)[0]
        assert launch.returncode == 0 and output.status()["reason"] == "cancelled while queued", printed[-3000:]
        (output.path / "cancel").unlink()
        launch = _launch(tmp_path / "train.json", output.path)
        _until(queued, what="the second launch to queue")
        time.sleep(1.0)
        assert output.status()["state"] == "queued" and not output.metrics()  # it waits: nothing trained
    finally:
        holding.release()
    printed = launch.communicate(timeout=240)[0]
    assert launch.returncode == 0, printed[-3000:]
    status = output.status()
    assert status["state"] == "finished" and len(status["rank_checksums"]) == 2
    assert not list(output.path.glob(".gpu-*")) and gpu_lock.holder() is None
