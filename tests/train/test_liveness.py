"""A run under faults, as users meet them: shards deleted mid-run, stop signals at any moment
(start-up, a stalled stream, Ctrl-C), two trainers on one run dir, a full disk, a finished run
that must exit. Real `gan-dist train` processes on tiny nets; each test names its finding in
issue 12."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gan_dist.run import checkpoint
from gan_dist.run.signals import EXIT_PREEMPTED
from support import tiny

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_shards(packed, tmp_path) -> Path:
    """A private copy of the tiny pack, so a test can delete it under a running trainer."""
    dest = tmp_path / "shards"
    shutil.copytree(packed, dest)
    return dest


@pytest.fixture(autouse=True)
def own_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


class Trainer:
    """`gan-dist train quickstart` in its own process group, its output read as it comes."""

    def __init__(self, shards: Path, run_dir: Path, steps: int = 100000, env=None, **extra):
        # untracked unless a test asks: MLflow's import and a fresh store cost 2 s a start
        settings = {
            "train.checkpoint_every": 2,
            "data.workers": 1,
            "tracking.enabled": "false",
            **extra,
        }
        self.run_dir = run_dir
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gan_dist",
                "train",
                "quickstart",
                *tiny(shards, steps, **settings),
                "--run-dir",
                str(run_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )

    def wait_for(self, marker: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(marker):
                return
            assert time.monotonic() < deadline, self.output
        raise AssertionError(f"ended before {marker!r}:\n{self.output}")

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float) -> tuple[int, float]:
        """Exit code and seconds it took; a process still alive then is killed and fails."""
        started = time.monotonic()
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rest, _ = self.proc.communicate()
            self.lines.append(rest)
            raise AssertionError(f"still running after {timeout} s:\n{self.output}") from None
        self.lines.append(rest)
        return self.proc.returncode, time.monotonic() - started

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def status(self) -> dict:
        return json.loads((self.run_dir / "status.json").read_text())


def delete_shards(shards: Path) -> None:
    for tar in shards.glob("*.tar"):
        tar.unlink()


def test_a_stream_whose_shards_vanish_fails_clearly_and_keeps_its_checkpoint(own_shards, tmp_path):
    """Finding 2: after a scratch purge the stream warned in a tight loop for ever (3.1 million
    lines), never stepped again, and status.json stayed `running`."""
    run = Trainer(own_shards, tmp_path / "run", **{"data.stall_timeout_s": 3})
    run.wait_for("step 4/")
    delete_shards(own_shards)
    code, _ = run.finish(timeout=120)
    assert code == 1, run.output
    assert "no training sample could be read" in run.output and "train-00000" in run.output
    assert "Traceback" not in run.output
    assert run.output.count("skipped broken data") <= 8  # once a minute per shard at most
    assert run.status["status"] == "failed"
    assert "no training sample could be read" in run.status["error"]
    kept = checkpoint.list_checkpoints(run.run_dir)
    assert kept and checkpoint.read(kept[0]).step >= 4


def test_a_stop_signal_during_a_stall_checkpoints_and_exits(own_shards, tmp_path):
    """Finding 2: SIGTERM during the stall wrote no checkpoint and the process never exited."""
    run = Trainer(own_shards, tmp_path / "run")  # the default stall limit, 60 s, is further
    run.wait_for("step 4/")
    delete_shards(own_shards)
    time.sleep(8)  # long enough for the prefetched batches to run out: now it waits for data
    run.signal(signal.SIGTERM)
    code, seconds = run.finish(timeout=90)
    assert code == EXIT_PREEMPTED, run.output
    assert seconds < 60
    assert "preempted (SIGTERM)" in run.output and "run the same command" in run.output.lower()
    assert run.status["status"] == "preempted"
    (newest, *_) = checkpoint.list_checkpoints(run.run_dir)
    assert run.status["checkpoint"] == str(newest) and run.status["step"] == newest_step(newest)


def catches_sigterm(pid: int, timeout: float = 60) -> None:
    """Returns once process `pid` has a SIGTERM handler (its SigCgt mask in /proc), polled
    every 10 ms: a fixed sleep lands after the first step on a fast machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:") and int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} caught no SIGTERM in {timeout} s")


def newest_step(path: Path) -> int:
    return checkpoint.read(path).step


def test_a_stop_signal_during_start_up_is_honoured(own_shards, tmp_path):
    """Finding 2: a signal before the first step must still end the run as preempted."""
    run = Trainer(own_shards, tmp_path / "run")
    catches_sigterm(run.proc.pid)  # the first thing `train` does; imports and set-up follow
    run.signal(signal.SIGTERM)
    code, seconds = run.finish(timeout=60)
    assert seconds < 45
    assert code == EXIT_PREEMPTED, run.output
    assert "Traceback" not in run.output
    assert not checkpoint.list_checkpoints(run.run_dir)
    assert run.status["status"] == "preempted"  # what a requeueing job script reads


def test_ctrl_c_checkpoints_and_says_how_to_resume(own_shards, tmp_path, own_store):
    """Finding 8: SIGINT exited 130 in a second with no checkpoint, status.json stayed at
    `running` step 0 and the MLflow run was marked FAILED."""
    run = Trainer(own_shards, tmp_path / "run", **{"data.workers": 2, "tracking.enabled": "true"})
    run.wait_for("step 5/")
    assert run.status["status"] == "running" and run.status["step"] >= 4  # kept current
    run.signal(signal.SIGINT)  # Ctrl-C reaches the whole foreground group, workers too
    code, _ = run.finish(timeout=90)
    assert code == EXIT_PREEMPTED, run.output
    assert "preempted (SIGINT)" in run.output and "Run the same command to resume" in run.output
    status = run.status
    assert status["status"] == "preempted" and status["step"] >= 5
    assert checkpoint.read(Path(status["checkpoint"])).step == status["step"]

    from mlflow import MlflowClient

    client = MlflowClient(own_store)
    (found,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert found.info.status == "KILLED"  # ended for now, as status.json says


def test_a_second_trainer_on_a_run_dir_is_refused_naming_the_holder(own_shards, tmp_path):
    """Finding 3: two trainers on one run dir both reported done, one's checkpoints replacing
    the other's."""
    first = Trainer(own_shards, tmp_path / "run")
    first.wait_for("step 2/")
    second = Trainer(own_shards, tmp_path / "run")
    code, seconds = second.finish(timeout=120)
    assert code == 1 and seconds < 60, second.output
    assert f"pid {first.proc.pid}" in second.output and "is in use by" in second.output
    assert first.proc.poll() is None and first.status["status"] == "running"

    # a killed holder leaves no stale lock: the next trainer takes over and resumes
    first.wait_for("step 4/")  # step 2's checkpoint is written before step 3 starts
    first.signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    third = Trainer(own_shards, tmp_path / "run", steps=newest_step_in(tmp_path / "run") + 2)
    code, _ = third.finish(timeout=180)
    assert code == 0, third.output
    assert "resumed from" in third.output


def newest_step_in(run_dir: Path) -> int:
    return checkpoint.read(checkpoint.list_checkpoints(run_dir)[0]).step


def test_a_requeued_job_waits_for_the_old_one_then_takes_over(own_shards, tmp_path):
    """Finding 3: a requeued SLURM job starting while the old one still drains."""
    requeued_env = {"SLURM_RESTART_COUNT": "1"}
    old = Trainer(own_shards, tmp_path / "run")
    old.wait_for("step 2/")
    impatient = Trainer(own_shards, tmp_path / "run", env=requeued_env, **{"launch.lock_wait_s": 1})
    code, _ = impatient.finish(timeout=120)
    assert code == 1 and "(waited 1 s)" in impatient.output, impatient.output
    assert old.proc.poll() is None  # the holder trains on, untouched

    requeued = Trainer(own_shards, tmp_path / "run", env=requeued_env)  # waits up to 300 s
    time.sleep(15)  # it has started and is waiting for the lock
    assert requeued.proc.poll() is None
    old.signal(signal.SIGTERM)  # the old job drains: checkpoint, exit 75
    assert old.finish(timeout=120)[0] == EXIT_PREEMPTED, old.output
    # from its own output: status.json is shared, and the requeued job may already have
    # taken over and written its progress there
    stopped_at = int(re.search(r"preempted \(SIGTERM\) at step (\d+)", old.output)[1])
    requeued.wait_for("step ")
    assert f"at step {stopped_at}" in requeued.output  # resumed where the old one stopped
    requeued.signal(signal.SIGTERM)
    assert requeued.finish(timeout=120)[0] == EXIT_PREEMPTED, requeued.output


def test_a_full_disk_at_a_checkpoint_fails_clearly_and_keeps_the_last_one(
    own_shards, tmp_path, small_disk
):
    """Finding 5: a checkpoint write on a full disk printed a traceback, status stayed
    `running`."""
    run = Trainer(own_shards, small_disk / "run", **{"train.checkpoint_every": 3})
    run.wait_for("step 4/")  # step 3's checkpoint is written; now fill the disk
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    code, _ = run.finish(timeout=120)
    assert code == 1, run.output
    # the first checkpoint due after the disk filled: step 6, or 9 where training outran the
    # filler (a loaded machine: step 6 was written before the disk was full)
    failed = re.search(r"could not write checkpoint \S*step-(\d{8})", run.output)
    assert failed, run.output
    assert "No space left on device" in run.output and "MB free" in run.output
    assert "Traceback" not in run.output
    assert run.status["status"] == "failed"
    kept = checkpoint.list_checkpoints(run.run_dir)
    assert checkpoint.read(kept[0]).step == int(failed.group(1)) - 3  # the last one, loadable
    assert f"the previous checkpoint {kept[0]} is kept" in run.output
    assert not list((run.run_dir / "checkpoints").glob(".*partial"))


def test_a_finished_run_exits_even_with_its_data_workers_alive(packed, tmp_path):
    """Finding 7: a finished run printed its last line and then waited for ever at exit, in
    multiprocessing's join of a DataLoader worker that ignores SIGTERM."""
    script = textwrap.dedent(
        f"""
        import itertools
        from gan_dist.data.stream import StreamConfig, make_stream
        stream = make_stream({str(packed)!r}, StreamConfig(2, 3, workers=2, shuffle_buffer=4))
        batches = iter(stream)
        print(len(list(itertools.islice(batches, 3))), "batches", flush=True)
        """
    )
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and "3 batches" in done.stdout, done.stderr


def test_data_workers_never_outlive_their_trainer(own_shards, tmp_path):
    """Finding 2: a worker busy in a stalled stream kept running (and looping) after its
    trainer was gone."""
    import psutil

    run = Trainer(own_shards, tmp_path / "run", **{"data.workers": 2})
    run.wait_for("step 3/")
    workers = psutil.Process(run.proc.pid).children()
    assert len(workers) == 2
    delete_shards(own_shards)
    time.sleep(3)  # the workers are now retrying shards that are gone
    run.proc.kill()  # an OOM kill of the trainer alone, not of its process group
    run.proc.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [p.pid for p in alive]


def test_a_stop_signal_reaches_a_run_whose_data_read_blocks(packed, tmp_path):
    """Found by trying: with a read that never returns (a hung mount; here a pipe), SIGTERM
    was ignored for minutes and status.json stayed `running`."""
    settings = {"data.train": "pipe:sleep 619", "data.val": "null", "data.allow_shell": "true"}
    run = Trainer(packed, tmp_path / "run", **settings)
    time.sleep(12)  # start-up is over: it waits for its first samples
    run.signal(signal.SIGTERM)
    code, seconds = run.finish(timeout=90)
    assert code == EXIT_PREEMPTED, run.output
    assert seconds < 45
    assert run.status["status"] == "preempted"
