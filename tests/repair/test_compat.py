"""What plugins and registered models import from before the layers (issue 26) still
resolves, to the same objects, and a version registered with an older `pyfunc.py` (kept in
tests/fixtures as it was registered) still loads and serves."""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support import make_model

DATA = Path(__file__).parents[1] / "fixtures"

KEPT = {  # old module -> (names, their home now)
    "gan_dist.registry": (["Family", "Settings"], "gan_dist.config.family"),
    "gan_dist.objectives": (["Adversarial"], "gan_dist.train.losses"),
    "gan_dist.models": (["load_files"], "gan_dist.repair.model_file"),
    "gan_dist.repair_files": (
        ["repair_bytes", "TILE", "OVERLAP", "BATCH"],
        "gan_dist.repair.files",
    ),
    "gan_dist.serving": (["RepairService"], "gan_dist.repair.serving"),
}


@pytest.mark.parametrize("old", sorted(KEPT))
def test_the_names_from_before_the_layers_are_the_same_objects(old):
    names, home = KEPT[old]
    before, now = importlib.import_module(old), importlib.import_module(home)
    for name in names:
        assert getattr(before, name) is getattr(now, name), f"{old}.{name}"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("entry", ["pyfunc_2026_12_03.py", "pyfunc_2026_12_06.py"])
def test_a_version_registered_with_an_older_entry_point_still_serves(tmp_path, entry):
    """The registry keeps each version's own copy of the entry point: one saved with the
    file as it was registered then repairs a row exactly as one saved today."""
    import mlflow

    from gan_dist.repair.publish import pyfunc_arguments

    files = make_model(tmp_path / "files", "model.prefill=none")
    today = pyfunc_arguments(files)
    mlflow.pyfunc.save_model(str(tmp_path / "today"), **today)
    mlflow.pyfunc.save_model(
        str(tmp_path / "then"), **(today | {"python_model": str(DATA / entry)})
    )
    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    hole = np.zeros((40, 56), np.uint8)
    hole[10:20, 20:40] = 255
    table = pd.DataFrame({"image": [png(photo)], "mask": [png(hole)]})
    then = mlflow.pyfunc.load_model(str(tmp_path / "then")).predict(table)
    now = mlflow.pyfunc.load_model(str(tmp_path / "today")).predict(table)
    assert list(then["status"]) == ["repaired"], then["detail"][0]
    assert then["image"][0] == now["image"][0]
