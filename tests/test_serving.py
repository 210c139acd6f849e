"""A registered model served over REST (`mlflow models serve`, a real server on loopback,
stopped by pid) answers with the same pixels as `gan-dist repair`, file by file, and says
which rows failed; registration stores a signature without a warning (issue 16, Build 2)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import run_cli, stop_group, train_quickstart

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registered(packed, tmp_path_factory) -> str:
    """`models:/serve-test@champion` in a store of its own; its tracking URI."""
    folder = tmp_path_factory.mktemp("serve")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    trained = train_quickstart(packed, 3, folder / "run", **{"tracking.uri": store})
    assert trained.returncode == 0, trained.stdout + trained.stderr
    result = run_cli(
        "models", "register", str(folder / "run"), "--name", "serve-test",
        "--alias", "champion", "--tracking-uri", store,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr, result.stderr  # no type-hint or example warning
    return store


class ModelServer:
    """`mlflow models serve -m URI --env-manager local` on 127.0.0.1, in its own process
    group so that its uvicorn worker stops with it."""

    def __init__(self, uri: str, store: str, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        bin_dir = str(Path(sys.executable).parent)  # where uvicorn is, as in an active venv
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": store,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
        }
        self.log = log
        self.proc = subprocess.Popen(
            [
                str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", uri,
                "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port),
            ],
            stdout=open(log, "ab"),  # noqa: SIM115 - lives with the server
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"model server not up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def invoke(self, rows: list[dict[str, bytes]], params: dict | None = None) -> list[dict]:
        """POST /invocations in the `dataframe_records` format, bytes as base64."""
        records = [{k: base64.b64encode(v).decode() for k, v in row.items()} for row in rows]
        body = {"dataframe_records": records} | ({"params": params} if params else {})
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)["predictions"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(exc.read().decode()[:3000]) from None

    def stop(self) -> None:
        stop_group(self.proc)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_the_served_model_repairs_like_gan_dist_repair(registered, tmp_path):
    store = registered
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    scan = rng.integers(0, 65536, (64, 48), dtype=np.uint16)  # 16-bit grey TIFF
    hole = np.zeros((70, 90), np.uint8)
    hole[20:40, 30:60] = 255
    scan_hole = np.zeros((64, 48), np.uint8)
    scan_hole[10:30, 5:20] = 1  # a 0/1 mask, read by the same rule as the command's
    files = tmp_path / "in"
    masks = tmp_path / "masks"
    files.mkdir()
    masks.mkdir()
    (files / "photo.png").write_bytes(png(photo))
    (masks / "photo.png").write_bytes(png(hole))
    tifffile.imwrite(files / "scan.tif", scan)
    (masks / "scan.png").write_bytes(png(scan_hole))
    repaired = run_cli(
        "repair", str(files), str(tmp_path / "out"), "--model", "models:/serve-test@champion",
        "--mask", str(masks), "--tracking-uri", store,
    )  # fmt: skip
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr

    server = ModelServer("models:/serve-test@champion", store, tmp_path / "serve.log")
    try:
        server.wait_ready()
        answers = server.invoke(
            [
                {"image": (files / "photo.png").read_bytes(), "mask": png(hole)},
                {"image": (files / "scan.tif").read_bytes(), "mask": png(scan_hole)},
                {"image": b"not an image", "mask": png(hole)},
                {"image": (files / "photo.png").read_bytes(), "mask": png(hole[:10])},
                {"image": (files / "photo.png").read_bytes(), "mask": b""},  # none given
            ]
        )
        refused = server.invoke(
            [{"image": (files / "photo.png").read_bytes(), "mask": png(hole)}],
            {"tile": 0, "batch": -3, "format": "gif"},
        )
    finally:
        server.stop()
    assert server.proc.poll() is not None

    photo_out, scan_out, garbage, wrong_mask, no_mask = answers
    assert photo_out["status"] == "repaired" and photo_out["format"] == ".png"
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(photo_out["image"]))))
    assert np.array_equal(served, np.asarray(Image.open(tmp_path / "out" / "photo.png")))
    assert not np.array_equal(served, photo)

    assert scan_out["status"] == "repaired" and scan_out["format"] == ".tif", scan_out
    assert "mask read as 0/1" in scan_out["detail"]
    served = tifffile.imread(io.BytesIO(base64.b64decode(scan_out["image"])))
    assert served.dtype == np.uint16  # 16 bits in, 16 bits out
    assert np.array_equal(served, tifffile.imread(tmp_path / "out" / "scan.tif"))

    assert garbage["status"] == "failed" and garbage["image"] == ""
    assert garbage["detail"].startswith("image: not a recognised image file")
    assert wrong_mask["status"] == "failed"
    assert wrong_mask["detail"] == "mask mask.png: 90x10, the image is 90x70"
    assert no_mask["status"] == "failed" and no_mask["detail"].startswith("no mask: ")
    # settings the command refuses are refused by name, before anything is decoded (tile 0
    # and batch -3 were repaired, or failed with a raw islice error)
    (row,) = refused
    assert row["status"] == "failed" and row["detail"] == (
        "params: format 'gif': use one of same, png, tif; tile 0: use 16 or more (px); "
        "batch -3: use 1 or more"
    )


def test_the_registered_version_carries_a_signature_and_an_example(registered):
    import mlflow

    store = registered
    mlflow.set_tracking_uri(store)  # undone after the test (conftest._keep_tracking_uri)
    info = mlflow.models.get_model_info("models:/serve-test@champion")
    assert info.signature.inputs.input_names() == ["image", "mask"]
    assert info.signature.outputs.input_names() == ["image", "format", "status", "detail"]
    assert {p.name: p.default for p in info.signature.params} == {
        "format": "same", "tile": 256, "overlap": 32, "batch": 4,
    }  # fmt: skip
    assert info.saved_input_example_info is not None
