"""Shared fixtures: real images written to disk, including the broken ones users have."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.data.images import write_png_atomic
from support import PLUGIN, gradient16, run_cli, save_pil

# One thread per process, for the processes tests start too: tiny nets gain nothing from a
# second, and with a test worker per core (pytest-xdist) every extra thread competes for the
# cores; the same tests took twice as long with torch's default of one thread per core. Set
# over a shell's own value too (SLURM jobs and HPC login shells often set one).
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests run on as many workers as there are cores (pytest-xdist, `--dist loadgroup`).
    Those that share something costly run on one worker, which makes it once: the SLURM
    cluster, the demo, and a module's own fixtures (a trained model, an MLflow server)."""
    for item in items:
        defs = item._fixtureinfo.name2fixturedefs
        if "slurm" in defs:
            group = "slurm"
        elif "slurm_hosts" in defs:
            group = "slurm-hosts"
        elif "demo" in defs:
            group = "demo"
        elif any(d[-1].scope == "module" for d in defs.values()):
            group = item.nodeid.split("::")[0]
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


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


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (see slurm_cluster.py); SLURM_CONF points at it while
    the session lasts. Skips where it cannot start, except under CI, where that fails."""
    from support import slurm_cluster

    root = tmp_path_factory.mktemp("slurm")
    yield from _cluster(slurm_cluster, lambda: slurm_cluster.start(root))


@pytest.fixture(scope="session")
def slurm_hosts(tmp_path_factory):
    """A real SLURM cluster of three hosts on this machine, each a network namespace with its
    own address, hostname and slurmd (see slurm_hosts.py); SLURM_CONF points at it while the
    session lasts. Skips where it cannot start, except under CI, where that fails."""
    from support import slurm_hosts

    root = tmp_path_factory.mktemp("slurm-hosts")
    yield from _cluster(slurm_hosts, lambda: slurm_hosts.start(root, nodes=3))


def _cluster(module, start):
    """A test cluster from `start()`, with SLURM_CONF pointing at it until it is stopped;
    a skip saying why where `module.unavailable()`, a failure under CI."""
    why = module.unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests ({module.__name__}): {why}")
        pytest.skip(why)
    cluster = start()
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


# --- packing ---


# --- plugins ---


@pytest.fixture(scope="session")
def toy_plugin(tmp_path_factory) -> str:
    """tests/fixtures/plugin (package gan-dist-toy) installed into this environment with pip, as a
    user installs a plugin; its version. Reinstalled every test run, so it follows the source:
    by the first worker that needs it, while the others wait (two pips at once in one
    environment break it)."""
    import importlib
    import importlib.util
    from importlib import metadata

    from filelock import FileLock

    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    if importlib.util.find_spec("setuptools"):  # else pip fetches it into an isolated build
        cmd.append("--no-build-isolation")
    # the run's folder, shared by its workers; without workers, this session's own
    run_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_root = run_root.parent
    installed = run_root / "toy-plugin-installed"
    with FileLock(str(installed) + ".lock", timeout=600):
        if not installed.exists():
            done = subprocess.run([*cmd, str(PLUGIN)], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            installed.touch()
    importlib.invalidate_caches()
    return metadata.version("gan-dist-toy")
