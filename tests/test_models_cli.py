"""Read-only model commands never create a tracking store, and `eval` never reports a score
it could not compute."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_repair import make_model

from conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> Path:
    """A 3-channel inpainting model trained at 32 px (its sides must divide by 8)."""
    return make_model(tmp_path_factory.mktemp("rgb-model"))


@pytest.fixture(scope="module")
def grey_shards(photo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grey") / "shards"
    packed = run_cli("data", "pack", str(photo_dir), str(out), "--size", "32", "--channels", "1")
    assert packed.returncode == 0, packed.stderr
    return out


def one_line_error(result, alone: bool = True) -> str:
    """The error line; `alone`: the only thing printed (else warnings may come before it)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    if alone:
        assert len(lines) == 1, result.stderr
    assert '"samples"' not in result.stdout
    return lines[-1]


# --- C: zero is not a score --------------------------------------------------------------------


def test_eval_of_an_rgb_model_on_grey_shards_says_the_channels_differ(rgb_model, grey_shards):
    result = run_cli("eval", "--model", str(rgb_model), "--data", str(grey_shards), "--json")
    message = one_line_error(result)
    assert "1-channel" in message and "3-channel" in message and str(grey_shards) in message


def test_eval_on_shards_of_a_size_the_model_cannot_take(rgb_model, photo_dir, tmp_path):
    shards = tmp_path / "shards36"
    packed = run_cli("data", "pack", str(photo_dir), str(shards), "--size", "36")
    assert packed.returncode == 0, packed.stderr
    result = run_cli("eval", "--model", str(rgb_model), "--data", str(shards), "--json")
    message = one_line_error(result)
    assert "36 px" in message and "multiple of 8" in message


def test_eval_on_shards_with_no_sample_to_score(rgb_model, packed, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(packed, empty)
    manifest = json.loads((empty / "manifest.json").read_text())
    manifest["counts"] = {"train": 0, "val": 0}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    message = one_line_error(run_cli("eval", "--model", str(rgb_model), "--data", str(empty)))
    assert "no samples" in message

    broken = tmp_path / "broken"  # the manifest promises samples; every shard is garbage
    shutil.copytree(packed, broken)
    for shard in broken.glob("*.tar"):
        shard.write_bytes(b"not a tar file" * 100)
    result = run_cli("eval", "--model", str(rgb_model), "--data", str(broken))
    message = one_line_error(result, alone=False)
    assert "none of the 8 val samples could be scored" in message


# --- D: resolving a models:/ URI never creates a tracking store ------------------------------


@pytest.fixture()
def empty_cwd(tmp_path, monkeypatch) -> Path:
    """A working directory without mlflow.db, and no MLFLOW_TRACKING_URI: the default store
    is ./mlflow.db, which does not exist."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "empty"
    cwd.mkdir()
    return cwd


def _picture(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "x.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "mask.png")
    return tmp_path / "in", tmp_path / "mask.png"


READ_ONLY = {
    "repair": lambda t, packed: [
        "repair",
        str(t / "in"),
        str(t / "out"),
        "--model",
        "models:/medical-repair@champion",
        "--mask",
        str(t / "mask.png"),
    ],
    "eval": lambda t, packed: ["eval", "--model", "runs:/0123abcd/repair-model", "--data", packed],
    "list": lambda t, packed: ["models", "list"],
    "promote": lambda t, packed: ["models", "promote", "medical-repair", "1", "--alias", "best"],
}


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_never_create_a_store(command, empty_cwd, tmp_path, packed):
    _picture(tmp_path)
    result = run_cli(*READ_ONLY[command](tmp_path, str(packed)), cwd=empty_cwd)
    message = one_line_error(result)
    assert f"no MLflow tracking store at {empty_cwd / 'mlflow.db'}" in message
    assert "sqlite:///mlflow.db" in message
    assert "MLFLOW_TRACKING_URI" in message and "--tracking-uri" in message
    assert list(empty_cwd.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_a_store_named_elsewhere_is_not_created_either(empty_cwd, tmp_path, monkeypatch):
    elsewhere = tmp_path / "shared" / "tracking.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    message = one_line_error(run_cli("models", "list", cwd=empty_cwd))
    assert str(elsewhere) in message and "from $MLFLOW_TRACKING_URI" in message
    flag = one_line_error(
        run_cli("models", "list", "--tracking-uri", f"sqlite:///{elsewhere}", cwd=empty_cwd)
    )
    assert str(elsewhere) in flag
    assert not elsewhere.parent.exists() and list(empty_cwd.iterdir()) == []
