"""One training job on the GPU at a time on this machine, whoever started it (the ComfyUI node, the command line's
`run` or `start`, each machine of an `accelerate launch`), with a first-come queue whose place a waiting job reports.

The lock folder is `$VIDEO_REWARD_LORA_LOCK_DIR` when set, else `video_reward_lora/` in the system's temporary folder
(`tempfile.gettempdir()`: /tmp on Linux), so every process of the machine finds the same one. It holds `gpu.lock`
(the file lock), `holder.json` (the job that holds it) and a ticket per waiting job (`<ns>-<pid>.ticket`: its job
folder and process). The queue is the tickets whose process is alive, oldest first; only the first of them tries the
lock, so jobs get the GPU in the order they asked for it, and a ticket of a killed process stops counting (and is
removed by the next reader).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...reward.files import write_json_atomic

LOCK_DIR_ENV = "VIDEO_REWARD_LORA_LOCK_DIR"
LOCK_NAME = "gpu.lock"
HOLDER = "holder.json"
TICKET = ".ticket"


def lock_dir() -> Path:
    """The machine's lock folder (created, and open to every user of the machine when it is the default one)."""
    configured = os.environ.get(LOCK_DIR_ENV)
    folder = Path(configured) if configured else Path(tempfile.gettempdir()) / "video_reward_lora"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        if not configured:
            with suppress(PermissionError):
                os.chmod(folder, 0o1777)  # like /tmp: anyone may queue, only the owner removes a file
    return folder


def _process() -> dict[str, Any]:
    import psutil

    return {"pid": os.getpid(), "started": psutil.Process().create_time()}


def _alive(record: dict[str, Any]) -> bool:
    """Whether the process a ticket or holder file names still runs (the same process, not a reused pid)."""
    import psutil

    try:
        process = psutil.Process(record["pid"])
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - record["started"]) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError):
        return False


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ahead(folder: Path, ticket: Path) -> int:
    """How many live tickets are older than `ticket`; dead ones are removed."""
    count = 0
    for other in sorted(folder.glob(f"*{TICKET}")):
        if other.name >= ticket.name:
            break
        record = _read(other)
        if record is not None and _alive(record):
            count += 1
        elif record is not None:
            with suppress(OSError):
                other.unlink()
    return count


def holder(folder: Path | None = None) -> str | None:
    """The job folder of the job that holds the lock, when it says so and its process runs."""
    record = _read((folder or lock_dir()) / HOLDER)
    return record["job"] if record is not None and _alive(record) else None


@dataclass
class GpuLock:
    """The held lock; releasing it (or leaving a `with` block) lets the next job in line start."""

    lock: Any
    folder: Path

    def __enter__(self) -> "GpuLock":
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def release(self) -> None:
        with suppress(OSError):
            (self.folder / HOLDER).unlink()
        self.lock.release()


def acquire(job: Path, cancelled: Callable[[], bool], waiting: Callable[[int, str | None], None] | None = None,
            poll: float = 1.0) -> GpuLock | None:
    """Wait in line for the machine's GPU lock for the job in folder `job`; the lock, held, or None when `cancelled()`
    turns true first. While it waits, `waiting(place, holder)` hears each change of its place in line (1: next) and
    of the job folder holding the lock (None when unknown)."""
    from filelock import FileLock, Timeout

    folder = lock_dir()
    lock = FileLock(str(folder / LOCK_NAME), mode=0o666, thread_local=False)  # any thread of the job may release it
    ticket = folder / f"{time.time_ns():020d}-{os.getpid()}{TICKET}"
    write_json_atomic(ticket, {"job": str(job), **_process()})
    try:
        heard = None
        while True:
            ahead = _ahead(folder, ticket)
            if ahead == 0:
                try:
                    lock.acquire(timeout=poll)
                except Timeout:
                    pass
                else:
                    with suppress(OSError):  # only the waiting jobs' text reads it
                        write_json_atomic(folder / HOLDER, {"job": str(job), **_process()})
                    return GpuLock(lock, folder)
            else:
                time.sleep(poll)
            if cancelled():
                return None
            place = (ahead + 1, holder(folder))
            if waiting is not None and place != heard:
                waiting(*place)
                heard = place
    finally:
        ticket.unlink(missing_ok=True)


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
