"""RUN_DIR/status.json: how the run last ended, for whatever launched it.

Launchers cannot tell a preempted run from a crashed one by exit code: Accelerate's launcher
exits 1 whenever a signal reached it, whatever its ranks returned. So rank 0 writes the
outcome here: `running` at start (still there after the processes are gone means a crash),
`preempted` once the checkpoint is safe, `completed` at the end. The SLURM script requeues
only on `preempted`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gan_dist.data.images import write_bytes_atomic

STATUS_FILE = "status.json"


def write(run_dir: Path, status: str, step: int, checkpoint: Path | None = None) -> None:
    doc = {
        "status": status,
        "step": step,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_bytes_atomic(run_dir / STATUS_FILE, (json.dumps(doc) + "\n").encode())


def read(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
