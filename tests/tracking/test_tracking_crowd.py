"""Many jobs on one tracking store, and stores that must never be left half-made.

A sweep or a SLURM array starts several `gan-dist train` jobs at the same moment on one
store: an embedded `mlflow.db` (fresh or existing) or an `mlflow server` backed by
PostgreSQL, as a cluster runs it. Every job must get a complete run. A store created on a
full disk must not be left half-created, and a run whose tracking never started must be
known as such (`Tracker.start_failed`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from gan_dist.core.errors import GanDistError
from gan_dist.run import checkpoint
from support import TRACKED, MlflowServer, cli_command, run_cli, tiny, train_quickstart

pytestmark = pytest.mark.integration

JOBS = 4
STEPS = 3


def start_crowd(packed: Path, cwd: Path, uri: str, experiment: str, n: int = JOBS):
    """N `gan-dist train` processes started at once, each with its own run directory."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"}
    cmd = cli_command(env)
    settings = tiny(packed, STEPS, **TRACKED, **{"tracking.experiment": experiment})
    return [
        subprocess.Popen(
            [*cmd, "train", "quickstart", *settings, "--run-dir", str(cwd / f"{experiment}-{i}")],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def finish_crowd(procs, timeout: float = 400) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, (out or "") + (err or "")))
    return results


def assert_complete_runs(uri: str, experiment: str, n: int = JOBS) -> None:
    """Every job of the crowd has its own finished run with every step's losses."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{experiment}-{i}" for i in range(n)]
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        history = client.get_metric_history(run.info.run_id, "train/g_rec")
        assert [m.step for m in history] == list(range(1, STEPS + 1)), run.info.run_name
        assert "images_per_s" in run.data.metrics and run.data.params["world_size"] == "1"


def run_crowd(packed: Path, cwd: Path, uri: str, check_uri: str, experiment: str) -> None:
    results = finish_crowd(start_crowd(packed, cwd, uri, experiment))
    for code, output in results:
        assert code == 0, output[-3000:]
        assert "refused" not in output and "did not receive" not in output, output[-3000:]
    assert_complete_runs(check_uri, experiment)


@pytest.fixture(scope="module")
def trained_run(packed, tmp_path_factory) -> Path:
    """A finished run with a checkpoint and no MLflow run of its own: registering it makes
    the run (and the experiment, if new)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = train_quickstart(packed, 2, run_dir, **{"tracking.enabled": "false"})
    assert result.returncode == 0, result.stderr
    return run_dir


# --- the embedded sqlite store ---------------------------------------------------------------


def test_a_crowd_of_registrations_on_a_fresh_store_all_get_their_version(trained_run, tmp_path):
    """`gan-dist models register` at the end of a sweep: the quickest crowd, and the one
    whose processes reach the store most nearly together (each only imports MLflow first),
    so MLflow's unlocked migration of a fresh store used to break it in nearly every trial.
    The store's folder does not exist yet either."""
    newest = checkpoint.list_checkpoints(trained_run)[0]
    copies = [shutil.copytree(newest, tmp_path / "copies" / f"job{i}") for i in range(JOBS)]
    # other weights for all but the last, whose weights are job0's: the same weights are one
    # version however close together the two registrations come
    for i, copy in enumerate(copies[1:-1], start=1):
        weights = load_file(copy / "ema.safetensors")
        first = next(iter(weights))
        weights[first] = weights[first] + i
        save_file(weights, copy / "ema.safetensors")
    for trial in range(2):  # the race broke nearly every trial; two catch it
        uri = f"sqlite:///{tmp_path / f'trial{trial}' / 'tracking' / 'mlflow.db'}"
        procs = [
            subprocess.Popen(
                [*cli_command(), "models", "register", str(copy), "--name", "crowd"],
                env={**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for copy in copies
        ]
        results = finish_crowd(procs, timeout=240)
        for code, output in results:
            assert code == 0, output[-3000:]
        listed = run_cli("models", "list", "crowd", "--tracking-uri", uri, "--json")
        assert listed.returncode == 0, listed.stderr
        versions = {int(row["version"]) for row in json.loads(listed.stdout)}
        assert len(versions) == JOBS - 1
        said = [re.search(r"registered models:/crowd/(\d+)", out) for _, out in results]
        assert all(said) and {int(m[1]) for m in said} == versions
        assert said[0][1] == said[-1][1], [out for _, out in results]


def test_a_lost_race_to_create_the_experiment_takes_the_winners(tmp_path):
    """Another job creates the experiment between our look-up and our create_experiment,
    which MLflow answers with RESOURCE_ALREADY_EXISTS (a 4xx the tracker used to take as a
    refusal, dropping the job's whole run)."""
    from mlflow import MlflowClient

    from gan_dist.tracking.experiments import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    winner = MlflowClient(uri).create_experiment("sweep")

    class LateClient(MlflowClient):
        looked = 0

        def get_experiment_by_name(self, name):
            self.looked += 1  # the first look-up happens before the winner's commit
            return None if self.looked == 1 else super().get_experiment_by_name(name)

    assert experiment_id(LateClient(uri), "sweep") == winner


@pytest.mark.timeout(900)
def test_a_crowd_of_jobs_on_a_fresh_store_all_get_complete_runs(packed, tmp_path):
    """Four jobs, `./mlflow.db` that does not exist yet, an experiment that does not."""
    for trial in range(1):  # more trials found nothing more (see the registration crowd)
        cwd = tmp_path / f"trial{trial}"
        cwd.mkdir()
        uri = "sqlite:///mlflow.db"  # the default: ./mlflow.db of the working directory
        run_crowd(packed, cwd, uri, f"sqlite:///{cwd / 'mlflow.db'}", f"fresh-{trial}")
        listed = run_cli("models", "list", "--tracking-uri", uri, cwd=cwd)
        assert listed.returncode == 0, listed.stderr
        assert "no registered models" in listed.stdout


@pytest.mark.timeout(900)
def test_a_crowd_of_jobs_on_an_existing_store_with_a_new_experiment(packed, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # a store made by MLflow itself, before the crowd
    run_crowd(packed, tmp_path, uri, uri, "existing")
    listed = run_cli("models", "list", "--tracking-uri", uri, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr


# --- an mlflow server backed by PostgreSQL ---------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL (see postgres_server.py). Skips where it cannot start, except under
    CI, where that fails."""
    from support import postgres_server

    why = postgres_server.unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {why}")
        pytest.skip(why)
    server = postgres_server.start()
    yield server
    server.stop()


@pytest.mark.timeout(900)
def test_a_crowd_of_jobs_on_an_mlflow_server_backed_by_postgres(packed, postgres, tmp_path):
    backend = postgres.create_database("crowd")
    server = MlflowServer(tmp_path, backend_uri=backend)
    server.start()
    try:
        for trial in range(2):  # a fresh (empty) store, then one that has runs already
            run_crowd(packed, tmp_path, server.url, server.url, f"server-{trial}")
        listed = run_cli("models", "list", "--tracking-uri", server.url, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
    finally:
        server.stop()
    assert not (tmp_path / "mlflow.db").exists()


# --- a full disk -----------------------------------------------------------------------------


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` bytes of free space."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    path = disk / "fill"
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return path


@pytest.mark.parametrize("leave", [0, 400 * 1024], ids=["no-space", "some-space"])
def test_a_store_created_on_a_full_disk_is_never_left_half_made(trained_run, small_disk, leave):
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    filler = fill(small_disk, leave)
    full = run_cli("models", "register", str(trained_run), "--name", "full", "--tracking-uri", uri)
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    message = full.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert str(small_disk / "mlflow.db") in message and "free on" in message, message
    assert sorted(os.listdir(small_disk)) == ["fill", "mlflow.db.lock"]  # the lock file only

    filler.unlink()  # space again: the store is created whole, and works
    registered = run_cli(
        "models", "register", str(trained_run), "--name", "full", "--tracking-uri", uri
    )
    assert registered.returncode == 0, registered.stderr
    listed = run_cli("models", "list", "full", "--tracking-uri", uri, "--json")
    assert listed.returncode == 0 and '"version": "1"' in listed.stdout, listed.stderr


# --- a run whose tracking never started ------------------------------------------------------


def _tracker(tmp_path: Path, uri: str, **settings: str):
    from gan_dist.config.recipe import load_recipe
    from gan_dist.tracking.tracker import Tracker

    recipe = load_recipe(
        "quickstart",
        [f"tracking.uri={uri}", *(f"{k}={v}" for k, v in settings.items())],
    )
    return Tracker(recipe, tmp_path / "run", None, enabled=True)


def test_start_failed_says_why_when_the_store_refuses_the_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the recipe's URI, as a user's would be
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    tracker = _tracker(tmp_path, uri, **{"tracking.experiment": "gone"})
    tracker.log_metrics({"train/g_rec": 1.0}, 1)
    tracker.close("FINISHED", 30)
    assert tracker.start_failed is not None
    assert "refused" in tracker.start_failed and "active" in tracker.start_failed
    assert tracker.dropped.metrics == 1


def test_start_failed_after_close_when_the_store_never_answers(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracker = _tracker(tmp_path, dead)
    tracker.close("FINISHED", 3)
    assert tracker.start_failed is not None and dead in tracker.start_failed


def test_start_failed_is_none_for_a_run_that_started(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracker = _tracker(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.log_metrics({"train/g_rec": 1.0}, 1)
    tracker.close("FINISHED", 60)
    assert tracker.start_failed is None and tracker.run_id is not None


def test_a_lost_race_is_sent_again_and_a_real_refusal_is_not():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, RESOURCE_DOES_NOT_EXIST

    from gan_dist.tracking.stores import refused

    locked = MlflowException("(sqlite3.OperationalError) database is locked", BAD_REQUEST)
    assert locked.get_http_status_code() == 400 and not refused(locked)
    assert refused(MlflowException("Run 'x' not found", RESOURCE_DOES_NOT_EXIST))
    assert not refused(GanDistError("disk full"))
