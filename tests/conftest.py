"""Shared fixtures: real images written to disk, including the broken ones users have."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from gan_dist.data.images import write_png_atomic

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


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """Every run the tests start tracks into one embedded store of their own, never into
    ./mlflow.db; tests that need a server start one (see test_tracking.py)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(autouse=True)
def _keep_tracking_uri():
    """`mlflow.set_tracking_uri` in a test's own process also sets $MLFLOW_TRACKING_URI:
    without this, every later test's `gan-dist` processes would track into that store. And
    where the test's monkeypatch put the variable back itself, mlflow's own default in this
    process still pointed at the test's server, stopped since: a later `MlflowClient()`
    asked it, and failed."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" not in sys.modules:
        return
    import mlflow

    changed = os.environ.get("MLFLOW_TRACKING_URI") != before
    if changed or (before is not None and mlflow.get_tracking_uri() != before):
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            mlflow.set_tracking_uri(None)
        else:
            mlflow.set_tracking_uri(before)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`gan-dist demo` run once, in a fresh directory, for a quarter of a minute: its result
    and work dir. It registers `models:/quickstart-repair@champion` in the test store."""
    cwd = tmp_path_factory.mktemp("demo")
    result = run_cli("demo", "--workdir", str(cwd / "demo"), "--minutes", "0.25", cwd=cwd)
    return result, cwd / "demo"


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A few real photos (scikit-image's bundled ones), downsized to keep tests quick."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "camera", "chelsea", "coffee", "coins", "moon"):
        arr = np.asarray(getattr(skimage.data, name)())
        im = Image.fromarray(arr)
        im.thumbnail((160, 160))
        im.save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def packed(photo_dir, tmp_path_factory) -> Path:
    """The photos as 4 crops of 32 px each: 16 train samples in 4 shards, 8 val samples in 2
    (two val shards, so two ranks each get one)."""
    from gan_dist.config.recipe import resolve_damage
    from gan_dist.data.pack import PackOptions, pack_folder

    out = tmp_path_factory.mktemp("packed")
    steps, label = resolve_damage("inpaint")
    options = PackOptions(
        size=32,
        crops_per_image=4,
        damage=steps,
        damage_source=label,
        val_fraction=0.34,
        shard_samples=4,
    )
    pack_folder(photo_dir, out, options)
    return out


@pytest.fixture()
def messy_dir(tmp_path: Path) -> Path:
    """Every bad input the issue lists, beside the files that must still be packed."""
    folder = tmp_path / "messy"
    folder.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes-really.jpg").write_text("this is text, not a JPEG\n")
    save_pil(folder / "cmyk.jpg", rgb, mode="CMYK")
    write_png_atomic(folder / "deep16.png", gradient16(72, 72))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    save_pil(folder / "alpha.png", rgba)
    save_pil(folder / "tiny.png", np.zeros((1, 1, 3), np.uint8))
    Image.new("1", (10_001, 10_001)).save(folder / "huge.png")
    (folder / "readme.txt").write_text("not an image")
    save_pil(folder / "sub" / "good.png", rgb)
    return folder


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """The real console script in its own process, as a user runs it."""
    exe = Path(sys.executable).with_name("gan-dist")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gan_dist"]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def tiny(shards: Path, steps: int, **extra: object) -> list[str]:
    settings = {
        "data.train": str(shards),
        "data.val": str(shards),
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
        "train.deterministic": "true",
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


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (see slurm_cluster.py); SLURM_CONF points at it while
    the session lasts. Skips where it cannot start, except under CI, where that fails."""
    import slurm_cluster

    why = slurm_cluster.unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests: {why}")
        pytest.skip(why)
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def small_disk(tmp_path):
    """An 8 MiB tmpfs of our own, unmounted afterwards; filling it is the test's part."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the full-disk test: mount: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


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


# --- packing ---


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


# --- plugins ---

PLUGIN = Path(__file__).with_name("plugin")


@pytest.fixture(scope="session")
def toy_plugin() -> str:
    """tests/plugin (package gan-dist-toy) installed into this environment with pip, as a
    user installs a plugin; its version. Reinstalled every session, so it follows the
    source."""
    import importlib
    import importlib.util
    from importlib import metadata

    from gan_dist.config import families as registry

    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    if importlib.util.find_spec("setuptools"):  # else pip fetches it into an isolated build
        cmd.append("--no-build-isolation")
    done = subprocess.run([*cmd, str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    importlib.invalidate_caches()
    registry._entry_points.cache_clear()
    return metadata.version("gan-dist-toy")
