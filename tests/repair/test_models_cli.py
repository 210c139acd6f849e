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

from support import run_cli

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
    holes = np.full((32, 32), 255, np.uint8)
    holes[0, 0] = 0  # one known pixel: a mask of all hole is refused
    Image.fromarray(holes).save(tmp_path / "mask.png")
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


# --- E: a folder is scored at its own size, as repair repairs it, and the report says so -----


def _photos(folder: Path) -> dict[str, np.ndarray]:
    """Three clean images larger than the model's 32 px crops, two of them not square, one
    of them 16-bit grey; saved under `folder`, returned as their pixels."""
    import skimage.data

    from gan_dist.data.images import encode_png

    folder.mkdir(parents=True)
    wide = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((300, 200)))
    tall = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((180, 260)))
    camera = np.asarray(Image.fromarray(skimage.data.camera()).resize((120, 90)))
    deep = (camera.astype(np.uint16) * 257 + np.arange(120, dtype=np.uint16) % 200)[:, :, None]
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(tall).save(folder / "tall.png")
    (folder / "deep.png").write_bytes(encode_png(deep))
    return {"wide.png": wide, "tall.png": tall, "deep.png": deep}


def _mask(path: Path, height: int, width: int, top: int, left: int) -> np.ndarray:
    hole = np.zeros((height, width), bool)
    hole[top : top + height // 3, left : left + width // 4] = True
    hole[height - 30 : height - 20, 10 : width - 10] = True  # a long scratch across tiles
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hole.astype(np.uint8) * 255).save(path)
    return hole


def _psnr(a: np.ndarray, b: np.ndarray, top: int) -> float:
    return float(10 * np.log10(top**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_eval_with_masks_scores_each_image_whole_as_repair_repairs_it(rgb_model, tmp_path):
    """Issue 24: a folder was packed into 32 px centre thumbnails and scored as those. Now
    each image is repaired at its own size exactly as `gan-dist repair` repairs it, with
    the user's masks matched as repair matches them, and scored over the whole image: its
    PSNR in the holes is the one computed by hand from repair's own output file."""
    photos = _photos(tmp_path / "photos")
    masks = tmp_path / "masks"
    holes = {  # the mask names repair takes: X.png, X_mask.png, LaMa's X_mask000.png
        "wide.png": _mask(masks / "wide.png", 200, 300, 40, 60),
        "tall.png": _mask(masks / "tall_mask.png", 260, 180, 70, 30),
        "deep.png": _mask(masks / "deep_mask000.png", 90, 120, 20, 50),
    }
    Image.fromarray(photos["wide.png"]).save(tmp_path / "photos" / "lost.png")  # no mask
    result = run_cli(
        "eval", "--model", str(rgb_model), "--data", str(tmp_path / "photos"), "--mask",
        str(masks), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [lost] = report["skipped"]
    assert lost["file"] == "lost.png" and lost["reason"].startswith("no mask found: ")
    assert "lost_mask.png" in lost["reason"] and "skipped lost.png: no mask found" in result.stderr
    repaired = run_cli(
        "repair", str(tmp_path / "photos"), str(tmp_path / "out"), "--model", str(rgb_model),
        "--mask", str(masks), "--json",
    )  # fmt: skip
    statuses = {Path(f["source"]).name: f["status"] for f in json.loads(repaired.stdout)["files"]}
    assert statuses == {**dict.fromkeys(photos, "repaired"), "lost.png": "failed"}
    rows = {row["file"]: row for row in report["images"]}
    assert set(rows) == set(photos)
    for name, clean in photos.items():
        row, hole = rows[name], holes[name]
        out = np.asarray(Image.open(tmp_path / "out" / name))
        out = out.reshape(clean.shape)
        top = np.iinfo(clean.dtype).max
        height, width = clean.shape[:2]
        assert row["size"] == f"{width}x{height}" and row["bit_depth"] == clean.itemsize * 8
        assert row["hole_pct"] == pytest.approx(100 * hole.mean())
        assert row["hole_psnr"] == pytest.approx(_psnr(out[hole], clean[hole], top), abs=1e-3)
        assert row["psnr"] == pytest.approx(_psnr(out, clean, top), abs=1e-3)
        err = np.abs(out.astype(np.float64) - clean)[hole].mean() / top
        assert row["hole_l1"] == pytest.approx(err, abs=1e-6)
    scored = report["scored"]
    assert scored["path"] == "folder" and scored["scale"] == "native"
    assert scored["images"] == report["samples"] == 3
    assert (scored["smallest"], scored["largest"]) == ("120x90", "300x200")
    assert scored["masks"] == f"--mask {masks}"
    mean = np.mean([100 * h.mean() for h in holes.values()])
    assert scored["hole_coverage_pct"] == pytest.approx(mean)
    assert report["hole_psnr"] == pytest.approx(np.mean([r["hole_psnr"] for r in rows.values()]))


def test_eval_without_masks_says_it_drew_the_models_damage_at_native_size(rgb_model, tmp_path):
    photos = _photos(tmp_path / "photos")
    args = ["eval", "--model", str(rgb_model), "--data", str(tmp_path / "photos")]
    first, again = run_cli(*args, "--json"), run_cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report == json.loads(again.stdout)  # the same holes: a fixed seed per file
    scored = report["scored"]
    assert scored["scale"] == "native" and scored["images"] == len(photos)
    assert scored["masks"].startswith("model damage preset 'inpaint' at native size")
    assert "32 px cells" in scored["masks"] and "seed 12345" in scored["masks"]
    sizes = {row["file"]: row["size"] for row in report["images"]}
    assert sizes == {"wide.png": "300x200", "tall.png": "180x260", "deep.png": "120x90"}
    assert all(10 <= row["hole_pct"] <= 45 for row in report["images"])  # inpaint: 10-40%
    table = run_cli(*args)
    assert table.returncode == 0, table.stderr
    title = " ".join(table.stdout.split())
    assert "3 images, 120x90 to 300x200 px, scale: native" in title
    assert "holes: model damage preset 'inpaint' at native size" in title
    assert "% of pixels" in title


def test_eval_on_shards_says_it_scored_packed_crops(rgb_model, packed, tmp_path):
    result = run_cli("eval", "--model", str(rgb_model), "--data", str(packed), "--json")
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)["scored"]
    assert scored["path"] == "shards" and scored["scale"] == "packed crops 32 px"
    assert scored["split"] == "val" and scored["smallest"] == scored["largest"] == "32x32"
    assert "inpaint" in scored["masks"] and 5 < scored["hole_coverage_pct"] < 60
    table = run_cli("eval", "--model", str(rgb_model), "--data", str(packed))
    assert "scale: packed crops 32 px" in " ".join(table.stdout.split())
    (tmp_path / "m.png").write_bytes(b"")
    args = ["--mask", str(tmp_path / "m.png")]
    message = one_line_error(
        run_cli("eval", "--model", str(rgb_model), "--data", str(packed), *args)
    )
    assert "carry their own masks" in message


def test_eval_of_a_restoration_model_damages_each_whole_image(tmp_path):
    """A denoiser is scored on its own noise drawn over each whole image at its size (the
    fixed seed and the file's path), restored as repair restores it, every pixel."""
    from pydantic import TypeAdapter

    from gan_dist.config.recipe import DamageStep, damage_preset
    from gan_dist.data.damage import damage_image, sample_rng
    from gan_dist.metrics.image_metrics import score_image
    from gan_dist.repair.model_file import load_model
    from gan_dist.repair.tiles import repair_array

    settings = ("model.composite=false", "data.damage=denoise", "model.prefill=none")
    model = make_model(tmp_path / "denoise", *settings, "objective.mask_aware=false")
    photos = _photos(tmp_path / "photos")
    result = run_cli("eval", "--model", str(model), "--data", str(tmp_path / "photos"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scored"]["masks"].startswith("none: the model's damage preset 'denoise'")
    assert "hole_psnr" not in report and report["scored"]["hole_coverage_pct"] == 0
    loaded = load_model(str(model)).use_precision("auto")
    steps = TypeAdapter(list[DamageStep]).validate_python(damage_preset("denoise"))
    rows = {row["file"]: row for row in report["images"]}
    for name, clean in photos.items():
        noisy, _, _ = damage_image(clean, steps, sample_rng(12345, name), 32)
        restored = repair_array(loaded, noisy, None)
        assert rows[name]["psnr"] == pytest.approx(score_image(restored, clean, None)["psnr"])
        assert rows[name]["hole_psnr"] is None
