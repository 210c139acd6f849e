"""RUN_DIR/status.json: how the run last ended, for whatever launched it.

Launchers cannot tell a preempted run from a crashed one by exit code: Accelerate's launcher
exits 1 whenever a signal reached it, whatever its ranks returned. So rank 0 writes the
outcome here: `running` at start and at every log line with the current step (still there
after the processes are gone means a crash), `preempted` once the checkpoint is safe,
`completed` at the end, `failed` with the error when training stopped on one. A rank that
lost contact with the others (a host died, a link is down) records `preempted` with the
error and cause `lost`: nothing new was saved, and a requeue resumes from the last
checkpoint. The SLURM script requeues only on `preempted`. Only the trainer that holds the
run dir's lock writes it.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

from gan_dist.core.files import write_bytes_atomic

STATUS_FILE = "status.json"


def write(
    run_dir: Path,
    status: str,
    step: int,
    checkpoint: Path | None = None,
    error: str | None = None,
    cause: str | None = None,
) -> None:
    """Atomic (a temp file renamed) where possible. On a full disk, where no new file can be
    made, the old file's own block is overwritten in place: the status of a run that failed
    for want of space must still say so. Raises OSError when neither works."""
    doc = {
        "status": status,
        "step": step,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if error:
        doc["error"] = error
        doc["cause"] = cause  # "user": an error the user can fix; "crash": anything else
    data = (json.dumps(doc) + "\n").encode()
    path = run_dir / STATUS_FILE
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or not path.is_file():
            raise
        with open(path, "r+b") as fh:
            fh.write(data)
            fh.truncate(len(data))


def read(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_if_free(
    run_dir: Path,
    status: str,
    step: int,
    checkpoint: Path | None,
    error: str | None = None,
    cause: str | None = None,
) -> bool:
    """For a process stopped or failed before it took the run dir's lock (a signal during
    start-up, data that is not there): write the status only if no other trainer holds the
    run dir. Returns whether it did."""
    from gan_dist.run.runlock import RunDirBusy, RunLock

    if checkpoint is None:  # the newest complete checkpoint, without reading it
        found = sorted((run_dir / "checkpoints").glob("step-*"), reverse=True)
        checkpoint = found[0] if found else None
    lock = RunLock(run_dir)
    try:
        lock.acquire(0.0)
    except RunDirBusy:
        return False
    try:
        write(run_dir, status, step, checkpoint, error, cause)
    finally:
        lock.release()
    return True
