"""The installed `gan-dist` command, run as a user runs it (separate processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gan_dist import __version__
from support import run_cli


@pytest.mark.integration
def test_cli_start_up_imports_no_heavy_module():
    code = (
        "import sys, gan_dist.cli; heavy = {'torch', 'mlflow', 'numpy', 'webdataset', "
        "'accelerate', 'PIL'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.integration
def test_repair_and_the_served_model_share_their_defaults():
    """The served model repairs like the command only if both tile the same way."""
    import inspect

    from gan_dist.cli.repair import repair
    from gan_dist.repair.files import BATCH, OVERLAP, TILE

    options = inspect.signature(repair).parameters
    defaults = {name: options[name].default.default for name in ("tile", "overlap", "batch")}
    assert defaults == {"tile": TILE, "overlap": OVERLAP, "batch": BATCH}


@pytest.mark.integration
def test_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ("recipes", "data", "train", "models", "repair", "eval", "demo"):
        assert group in result.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"gan-dist {__version__}"


@pytest.mark.integration
def test_pack_then_inspect_real_photos(photo_dir, tmp_path):
    out = tmp_path / "shards"
    packed = run_cli(
        "data",
        "pack",
        str(photo_dir),
        str(out),
        "--size",
        "64",
        "--crops-per-image",
        "2",
        "--damage",
        "old-photo",
        "--shard-samples",
        "5",
    )
    assert packed.returncode == 0, packed.stderr
    assert "packed 6 images" in packed.stdout
    inspected = run_cli("data", "inspect", str(out), "--json", "--grid", str(tmp_path / "g.png"))
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["splits"]["train"]["samples"] + report["splits"]["val"]["samples"] == 12
    assert (tmp_path / "g.png").stat().st_size > 1000


@pytest.mark.integration
def test_demo_trains_registers_and_its_model_repairs_by_alias(demo, tmp_path):
    """The README's main job, in a fresh directory (no ./mlflow.db: the test store)."""
    import numpy as np
    from PIL import Image

    result, workdir = demo
    assert result.returncode == 0, result.stderr + result.stdout
    assert "models:/quickstart-repair@champion" in result.stdout
    assert "mlflow ui --backend-store-uri" in result.stdout
    assert "/runs?workflowType=machine_learning&viewStateShareKey=gan-dist" in result.stdout
    manifest = json.loads((workdir / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["val"] > 0
    grid = np.asarray(Image.open(workdir / "repairs.png"))
    assert grid.shape[0] > 6 * 128 and grid.shape[1] > 3 * 128

    photo = np.asarray(Image.open(workdir / "images" / "coffee.png"))[:200, :260]
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[50:90, 100:180] = 255
    Image.fromarray(mask).save(tmp_path / "coffee-mask.png")
    repaired = run_cli(
        "repair",
        str(tmp_path / "coffee.png"),
        str(tmp_path / "fixed.png"),
        "--model",
        "models:/quickstart-repair@champion",
        "--mask",
        str(tmp_path / "coffee-mask.png"),
    )
    assert repaired.returncode == 0, repaired.stderr
    assert np.asarray(Image.open(tmp_path / "fixed.png")).shape == photo.shape


@pytest.mark.integration
def test_errors_exit_non_zero_without_traceback(tmp_path):
    result = run_cli("data", "pack", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("recipes", "validate", str(tmp_path / "none.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
