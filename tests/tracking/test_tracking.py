"""Tracking and the registry against a real `mlflow server` on 127.0.0.1 (and the embedded
sqlite store): what a run logs, resume into the same run, an outage mid-run, registering,
promoting, loading by alias, and a tampered registry artifact."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from support import TRACKED, MlflowServer, cli_command, run_cli, tiny, train_quickstart

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def only_run(uri: str, experiment: str = "quickstart"):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def env_with(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"}


def train_into(uri: str, shards: Path, steps: int, run_dir: Path, settings: dict):
    """`gan-dist train quickstart` (tiny) tracking into `uri`."""
    settings = tiny(shards, steps, **TRACKED, **settings)
    return subprocess.run(
        [*cli_command(), "train", "quickstart", *settings, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env=env_with(uri),
        timeout=240,
    )


def test_a_run_over_http_logs_everything_and_registers_a_usable_model(
    packed, server, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    run_dir = tmp_path / "run"
    extra = {
        "data.val": str(packed),
        "train.eval_every": 3,
        "train.sample_every": 3,
        "tracking.register_as": "quickstart-repair",
    }
    result = train_quickstart(packed, 6, run_dir, **TRACKED, **extra)
    assert result.returncode == 0, result.stderr
    assert "registered models:/quickstart-repair/1" in result.stdout

    run = only_run(server.url)
    c = client(server.url)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["optim.generator.lr"] == "0.0002"
    assert params["model.generator.name"] == "unet"
    assert params["world_size"] == "1" and tags["device"] == "cpu"
    assert len(params) <= 8  # the UI prints them under every image: the whole recipe hid it
    assert "version.torch" in tags and "version.gan_dist" in tags
    history = c.get_metric_history(run.info.run_id, "train/g_rec")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    for key in ("train/d_real", "train/d_fake", "images_per_s", "val/hole_psnr"):
        assert key in run.data.metrics, key
    assert "lr/generator" not in run.data.metrics  # constant: a param, not a flat chart at 0
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val/psnr")] == [3, 6]
    # the prefill alone, once: what the net adds to it (issue 25)
    baseline = c.get_metric_history(run.info.run_id, "val/prefill/hole_psnr")
    assert [m.step for m in baseline] == [3]
    assert "the biharmonic prefill alone: hole_psnr " in result.stdout + result.stderr
    images = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
    for step in (0, 3, 6):  # before training, then every sample_every steps
        assert sum(p.endswith(".png") and f"grid~repair+step+{step}+" in p for p in images) == 1
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "data", "repair_grid.png"} <= artifacts
    assert tags["mlflow.note.content"].startswith("![grid/repair](get-artifact?path=repair_grid")
    assert "**grid/repair at step 6**" in tags["mlflow.note.content"]
    assert (run_dir / "repair_grid.png").is_file()
    assert f"MLflow run {run.info.run_id}: open {server.url}/#/experiments/" in result.stdout
    assert {a.path for a in c.list_artifacts(run.info.run_id, "data/train")} == {
        "data/train/manifest.json"
    }

    version = c.get_model_version("quickstart-repair", "1")
    assert version.run_id == run.info.run_id
    assert float(version.tags["val.psnr"]) > 10 and version.tags["step"] == "6"

    promoted = run_cli("models", "promote", "quickstart-repair", "1", "--alias", "champion")
    assert promoted.returncode == 0, promoted.stderr
    listed = run_cli("models", "list", "quickstart-repair", "--json")
    assert '"champion"' in listed.stdout, listed.stdout

    # gan-dist repair by alias over HTTP, then MLflow's own pyfunc loader on the same model
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    mask = np.zeros((70, 90), np.uint8)
    mask[20:40, 30:60] = 255
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    repaired = run_cli(
        "repair",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--model",
        "models:/quickstart-repair@champion",
        "--mask",
        str(tmp_path / "masks"),
    )
    assert repaired.returncode == 0, repaired.stderr + repaired.stdout
    out = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert out.shape == img.shape and out.dtype == np.uint8
    keep = mask == 0
    assert np.array_equal(out[keep], img[keep])
    assert not np.array_equal(out[~keep], img[~keep])

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model("models:/quickstart-repair@champion")
    files = {
        name: (tmp_path / d / "a.png").read_bytes()
        for name, d in (("image", "in"), ("mask", "masks"))
    }
    predicted = model.predict(pd.DataFrame({k: [v] for k, v in files.items()}))
    assert predicted["status"][0] == "repaired"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(predicted["image"][0]))), out)


def test_resumed_training_continues_the_same_run(packed, tmp_path, monkeypatch, mlflow_store):
    run_dir = tmp_path / "run"
    extra = {
        "train.checkpoint_every": 4,
        "tracking.experiment": "resume-test",
        "tracking.register_as": "resume-test",
    }
    first = train_quickstart(packed, 4, run_dir, **TRACKED, **extra)
    assert first.returncode == 0, first.stderr
    second = train_quickstart(packed, 8, run_dir, "--resume", "auto", **TRACKED, **extra)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout
    run = only_run(mlflow_store, "resume-test")
    steps = [
        m.step for m in client(mlflow_store).get_metric_history(run.info.run_id, "train/g_rec")
    ]
    assert steps == list(range(1, 9))
    assert run.info.status == "FINISHED"
    versions = client(mlflow_store).search_model_versions(f"run_id='{run.info.run_id}'")
    assert len(versions) == 2  # each completed training registers its result


def test_an_outage_mid_run_loses_nothing_once_the_server_is_back(packed, tmp_path):
    srv = MlflowServer(tmp_path)
    srv.start()
    try:
        steps = 150
        proc = subprocess.Popen(
            [
                *cli_command(),
                "train",
                "quickstart",
                *tiny(packed, steps, **TRACKED),
                "--run-dir",
                str(tmp_path / "run"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env_with(srv.url),
            start_new_session=True,
        )
        c = client(srv.url)
        deadline = time.monotonic() + 120
        while True:  # wait until the run has logged something, then pull the plug
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            exp = c.get_experiment_by_name("quickstart")
            runs = c.search_runs([exp.experiment_id]) if exp else []
            if runs and "train/g_rec" in runs[0].data.metrics:
                break
            time.sleep(0.5)
        srv.stop()
        time.sleep(4)
        assert proc.poll() is None, "training ended during the outage; make it longer"
        srv.start()
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
        assert "failed" in output and "retrying" in output
        assert "reachable again" in output
        assert "Retrying (" not in output  # urllib3's line per request (hostile pass)
        run = only_run(srv.url)
        history = client(srv.url).get_metric_history(run.info.run_id, "train/g_rec")
        assert [m.step for m in history] == list(range(1, steps + 1))
        assert run.info.status == "FINISHED"
    finally:
        srv.stop()


@pytest.mark.parametrize("required", [True, False])
def test_training_finishes_when_the_tracking_server_never_answers(packed, tmp_path, required):
    """Training is never held up by tracking; but a job whose run never started must not
    pass for a success (finding 4 of issue 12): exit 4 unless tracking.required is false."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    settings = {
        "tracking.flush_timeout_s": 3,
        "tracking.register_as": "x",
        "tracking.required": str(required).lower(),
    }
    start = time.monotonic()
    result = train_into(dead, packed, 4, tmp_path / "run", settings)
    assert "did not receive" in result.stderr and "sets of metrics" in result.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()
    assert time.monotonic() - start < 120
    if required:
        assert result.returncode == 4, result.stderr
        assert "the MLflow run could not be started" in result.stderr
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["status"] == "failed" and "MLflow" in status["error"]
    else:
        assert result.returncode == 0, result.stderr
        assert "this run is untracked" in result.stderr and "could not register" in result.stderr


def test_a_refused_run_start_stops_the_job_loudly(packed, tmp_path):
    """Finding 4 of issue 12: a job whose run start was refused logged nothing and exited 0."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("refusing"))  # runs are refused there
    settings = {"tracking.experiment": "refusing", "train.checkpoint_every": 2}
    result = train_into(uri, packed, 200, tmp_path / "run", settings)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the MLflow run could not be started (MLflow at" in result.stderr
    assert "refused" in result.stderr and "Traceback" not in result.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] < 200  # stopped early


def test_a_tampered_registry_artifact_is_refused_without_running_it(packed, tmp_path, mlflow_store):
    run_dir = tmp_path / "run"
    result = train_quickstart(
        packed, 2, run_dir, **TRACKED, **{"tracking.register_as": "tamper-test"}
    )
    assert result.returncode == 0, result.stderr
    store = Path(mlflow_store.removeprefix("sqlite:///")).parent
    (weights,) = [
        p for p in store.rglob("weights.safetensors") if _belongs_to(p, "tamper-test", mlflow_store)
    ]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    weights.write_bytes(pickle.dumps(Evil()))
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "x.png")
    holes = np.full((32, 32), 255, np.uint8)
    holes[0, 0] = 0  # one known pixel: a mask of all hole is refused
    Image.fromarray(holes).save(tmp_path / "m.png")
    repaired = run_cli(
        "repair",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--model",
        "models:/tamper-test/1",
        "--mask",
        str(tmp_path / "m.png"),
    )
    assert repaired.returncode == 1
    assert "not a valid safetensors file" in repaired.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def _belongs_to(path: Path, name: str, uri: str) -> bool:
    """Is this artifact file part of the registered model `name`'s version 1?"""
    version = client(uri).get_model_version(name, "1")
    model_id = version.source.removeprefix("models:/")
    return model_id in str(path)
