"""One trainer per run directory.

Two trainers on one run dir (a job submitted twice, a requeued job starting while the old one
still drains) would overwrite each other's checkpoints. Rank 0 holds an OS file lock
(`flock`, through filelock) on `RUN_DIR/.lock` for the whole run: the kernel releases it when
the process dies however it dies, so a killed job never leaves a stale lock. Who holds it
(host, pid, since when) is in `RUN_DIR/lock.json`, for the message the next one gets.
On a shared filesystem the lock needs working `flock` (NFSv4, Lustre mounted with `flock`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from gan_dist.core.errors import GanDistError
from gan_dist.core.files import write_bytes_atomic

LOCK_FILE, HOLDER_FILE = ".lock", "lock.json"


class RunDirBusy(GanDistError):
    """Another trainer holds the run directory."""


def _holder(run_dir: Path) -> str:
    try:
        doc = json.loads((run_dir / HOLDER_FILE).read_text())
        return f"{doc['host']} pid {doc['pid']} since {doc['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no holder record)"


class RunLock:
    """An exclusive lock on a run directory; `acquire` waits at most `wait_s` seconds."""

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock

        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(run_dir / LOCK_FILE)

    def acquire(self, wait_s: float = 0.0) -> None:
        """Raises RunDirBusy naming the holder when the lock is still held after `wait_s`."""
        self._take(wait_s)
        record: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
        }
        write_bytes_atomic(self.run_dir / HOLDER_FILE, json.dumps(record).encode())

    def _take(self, wait_s: float) -> None:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=wait_s, poll_interval=0.5)
        except Timeout:
            waited = f" (waited {wait_s:.0f} s)" if wait_s else ""
            raise RunDirBusy(
                f"{self.run_dir} is in use by {_holder(self.run_dir)}{waited}; one trainer per "
                "run dir: wait for it to end, stop it, or choose another --run-dir"
            ) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def check_free(run_dir: Path) -> None:
    """Raise RunDirBusy if a trainer holds `run_dir` now (taken and released at once)."""
    if not (run_dir / LOCK_FILE).exists():
        return
    lock = RunLock(run_dir)
    lock._take(0.0)
    lock.release()
