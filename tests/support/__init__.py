"""Helpers the tests share (files, commands, tiny models, an MLflow server); fixtures are in
conftest.py."""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from support.warm_cli import WarmCli

if TYPE_CHECKING:
    from gan_dist.data.pack import PackOptions


def save_pil(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path, **kw)
    return path


def gradient16(height: int = 64, width: int = 64, channels: int = 1, seed: int = 0) -> np.ndarray:
    """16-bit data that an 8-bit path cannot represent (odd values, full range)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=(height, width, channels), dtype=np.uint16)


def cli_command(env: dict[str, str] | None = None, cold: bool = False) -> list[str]:
    """The argv that runs `gan-dist` in its own process with `env` (default: this one's):
    forked from a server that has imported torch and MLflow already (see warm_cli.py), or
    the console script itself where `cold` or where a fork would differ from it."""
    return _warm.command(dict(os.environ) if env is None else env, cold)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 240, cold: bool = False
) -> subprocess.CompletedProcess:
    """`gan-dist ARGS` in its own process, as a user runs it (see `cli_command`); cold for
    runs compared bit for bit (see `EXACT`)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*cli_command(env, cold or exact(args)), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


_warm = WarmCli()
atexit.register(_warm.stop)


TRACKED = {"tracking.enabled": "true"}  # `tiny(..., **TRACKED)`: a run MLflow tracks
EXACT = {"train.deterministic": "true"}  # `tiny(..., **EXACT)`: runs compared bit for bit


def exact(args: list[str] | tuple[str, ...]) -> bool:
    """Whether a command's arguments make a run that a test compares bit for bit: it starts
    cold, with a hash seed of its own as every user's run has, never the fork server's."""
    return "train.deterministic=true" in args


def tiny(shards: Path, steps: int, **extra: object) -> list[str]:
    """`--set` arguments for a run of `steps` steps on 32 px images and 8-channel nets.
    Without validation, the SSIM loss and MLflow unless a test asks (`**{"data.val":
    str(shards)}`, `**{"objective.ssim_weight": 1000}`, `**TRACKED`):
    validation and SSIM load torchmetrics, and through it torchvision and torch._dynamo, 2 s
    of a 7 s run; MLflow's import and its store another 2 s; the suite starts hundreds.
    A test that sets another tracking value (register_as, experiment, uri) is tracked.
    Not `train.deterministic` unless a test asks (`**EXACT`): torch's switch imports
    torch._inductor, 1 s of a 3 s run."""
    tracked = any(k.startswith("tracking.") and v not in (None, "null") for k, v in extra.items())
    settings = {
        "data.train": str(shards),
        "data.val": "null",
        "objective.ssim_weight": 0,
        "data.image_size": 32,
        "data.batch_size": 4,
        "data.workers": 0,
        "data.shuffle_buffer": 8,
        "model.generator.base_channels": 8,
        "model.discriminator.base_channels": 8,
        "train.max_steps": steps,
        "train.log_every": 1,
        "train.eval_every": 1000,
        "train.checkpoint_every": 1000,
        "train.deterministic": "false",
        "tracking.enabled": "true" if tracked else "false",
        "tracking.register_as": "null",  # registering costs seconds; tests that need it ask
        **extra,
    }
    # None leaves a setting at the recipe's value
    return [arg for k, v in settings.items() if v is not None for arg in ("--set", f"{k}={v}")]


def train_quickstart(shards: Path, steps: int, run_dir: Path, *args: str, **extra: object):
    """`gan-dist train quickstart` on the tiny settings, as a user runs it."""
    return run_cli(
        "train", "quickstart", *tiny(shards, steps, **extra), "--run-dir", str(run_dir), *args
    )


def blank_dicom(path: Path, sop_class: str):
    """An empty DICOM dataset with the file meta a reader expects; the test fills pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)


class MlflowServer:
    """`mlflow server` (or `mlflow ui`, as the README tells users: `command="ui"`) on
    loopback, stopped (and restartable) by pid. Its backend store is `backend_uri` (e.g.
    PostgreSQL, as a cluster runs it), else a sqlite file in `root`."""

    def __init__(self, root: Path, backend_uri: str | None = None, command: str = "server") -> None:
        self.root, self.command = root, command
        self.backend_uri = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        exe = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [
                str(exe),
                self.command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                self.backend_uri,
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=open(self.root / "server.log", "ab"),  # noqa: SIM115 - lives with the server
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # MLflow 3's job runner (scorers, the AI gateway): processes gan-dist never uses
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"mlflow server not healthy in {timeout} s")

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc)


def read_log(path: Path) -> str:
    """A log that a job may not have started yet: "" until it exists."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(condition, timeout: float, what: str) -> None:
    """Polls `condition()` every 0.5 s; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_at_step(
    submitted: subprocess.CompletedProcess, run_dir: Path, step: int
) -> tuple[str, Path]:
    """The job id that `gan-dist launch --slurm` printed and the job's log in `run_dir`, once
    the log shows training step `step` (120 s at most)."""
    if submitted.returncode:
        raise AssertionError(f"the job was not submitted: {submitted.stderr}")
    job_id = submitted.stdout.strip()
    log = run_dir / f"slurm-{job_id}.log"
    started = re.compile(rf"^step {step}/", re.M)
    wait_for(lambda: started.search(read_log(log)), 120, f"step {step} in {log}")
    return job_id, log


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a server started with start_new_session (its workers too), SIGKILL if it
    has not stopped in 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def make_model(folder: Path, *settings: str, train: bool = True) -> Path:
    """A real model folder (weights + spec) as `models register` stores it. `train` nudges
    the weights off their zero-initialised correction so the net's output matters."""
    import json

    import torch
    from safetensors.torch import save_file

    from gan_dist.config.recipe import load_recipe
    from gan_dist.nets.build import build_generator
    from gan_dist.repair.model_file import SPEC, WEIGHTS, spec_for

    recipe = load_recipe(
        "quickstart",
        ["data.image_size=32", "model.generator.base_channels=4", *settings],
    )
    torch.manual_seed(0)
    net = build_generator(recipe.model, recipe.data.channels, 32)
    if train:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS))
    (folder / SPEC).write_text(json.dumps(spec_for(recipe, 0, {})))
    return folder


def hole(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 3 : w // 3 + max(w // 4, 3)] = True
    return mask


def options(**kw) -> PackOptions:
    """Small, quick pack options; `damage` names a preset (default inpaint)."""
    from gan_dist.config.recipe import resolve_damage
    from gan_dist.data.pack import PackOptions

    steps, label = resolve_damage(kw.pop("damage", "inpaint"))
    base = dict(size=64, damage=steps, damage_source=label, val_fraction=0.2, shard_samples=4)
    return PackOptions(**{**base, **kw})


def read_samples(folder: Path, split: str | None = None) -> list[dict[str, bytes]]:
    """Every sample of a pack (optionally of one split) as {extension: bytes}."""
    import json
    import tarfile

    manifest = json.loads((folder / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        if split and shard["split"] != split:
            continue
        with tarfile.open(folder / shard["name"]) as tar:
            grouped: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                grouped.setdefault(key, {})[ext] = tar.extractfile(m).read()
        samples += grouped.values()
    return samples


def pack_cli(*args: str):
    """`gan-dist data pack ARGS` in this process (typer's runner)."""
    from typer.testing import CliRunner

    from gan_dist.cli import app

    return CliRunner().invoke(app, ["data", "pack", *args], catch_exceptions=False)


PLUGIN = Path(__file__).parents[1] / "fixtures" / "plugin"  # the toy plugin package
