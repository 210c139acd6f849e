"""A registered model served over REST (`mlflow models serve`, a real server on loopback,
stopped by pid) answers with the same pixels as `gan-dist repair`, file by file, and says
which rows failed; registration stores a signature without a warning (issue 16, Build 2).
A cell of any type, and a request that cannot finish within the server's timeout, fail
only their own rows, in words that name the request's params (issue 24: 11, 12, 17); the
README's request commands work for a real photo."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from support import make_model, run_cli, stop_group, train_quickstart

README = Path(__file__).parents[2] / "docs" / "tracking.md"  # the serving commands
TIMEOUT_VARIABLE = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def holed(height: int, width: int, box: tuple[slice, slice] | None = None) -> bytes:
    """A mask PNG with a hole at `box` (when None all of it but the first column: a mask of
    all hole is refused, there is nothing to repair from)."""
    mask = np.zeros((height, width), np.uint8)
    mask[box if box is not None else np.s_[:, 1:]] = 255
    return png(mask)


def no_cli_flags(rows: pd.DataFrame | list[dict]) -> None:
    """No detail a served row carries names a `gan-dist repair` option (`--format`)."""
    details = rows["detail"] if isinstance(rows, pd.DataFrame) else [r["detail"] for r in rows]
    for detail in details:
        assert not re.search(r"--[a-z]|OUTPUT", detail), detail


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    """A small inpainting model without a prefill (its time is its tiles), saved as the
    registry stores it (`publish.pyfunc_arguments`): a local MLflow model folder."""
    import mlflow

    from gan_dist.repair.publish import pyfunc_arguments

    folder = tmp_path_factory.mktemp("pyfunc")
    files = make_model(folder / "files", "model.prefill=none")
    mlflow.pyfunc.save_model(str(folder / "model"), **pyfunc_arguments(files))
    return str(folder / "model")


def load(path: str):
    import mlflow

    return mlflow.pyfunc.load_model(path)


photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
mask = holed(40, 56, np.s_[10:20, 20:40])


def test_a_cell_of_any_type_fails_only_its_own_row(saved_model):
    """Bytes-like cells work and a missing mask is no mask; every other cell fails its own
    row, naming the type it got and what to send (a numpy mask said "no mask"; a PIL
    image or a path string raised TypeError for the whole table)."""
    from PIL import Image as PILImage

    data = png(photo)
    cells = [  # (image, mask, the row's status, the start of its detail)
        (data, mask, "repaired", "8.9% of pixels"),
        (bytearray(data), memoryview(mask), "repaired", "8.9% of pixels"),
        (memoryview(data), bytearray(mask), "repaired", "8.9% of pixels"),
        (data, np.zeros((40, 56), np.uint8), "failed", "mask: got numpy.ndarray; send the mask"),
        (data, PILImage.new("L", (56, 40)), "failed", "mask: got PIL.Image.Image; send the mask"),
        (data, "masks/photo.png", "failed", "mask: got str; send the mask file's bytes"),
        (data, 7, "failed", "mask: got int; send the mask file's bytes"),
        (data, None, "failed", "no mask: an inpainting model needs the mask file's bytes"),
        (data, float("nan"), "failed", "no mask: an inpainting model needs"),
        (data, b"", "failed", "no mask: an inpainting model needs"),
        (photo, mask, "failed", "image: got numpy.ndarray; send the image file's bytes (PNG, JPEG"),
        (PILImage.fromarray(photo), mask, "failed", "image: got PIL.Image.Image; send the image"),
        (base64.b64encode(data).decode(), mask, "failed", "image: got str; send the image file's"),
        ("photo.png", mask, "failed", "image: got str; send the image file's bytes"),
        (None, mask, "failed", "image: empty or missing; send the image file's bytes"),
        (float("nan"), mask, "failed", "image: empty or missing"),
        (3.5, mask, "failed", "image: got float; send the image file's bytes"),
        (data, mask, "repaired", "8.9% of pixels"),
    ]  # fmt: skip
    table = pd.DataFrame(
        {
            "image": pd.Series([c[0] for c in cells], dtype=object),
            "mask": pd.Series([c[1] for c in cells], dtype=object),
        }
    )
    out = load(saved_model).predict(table)
    assert len(out) == len(cells)
    for (_, _, status, detail), row in zip(cells, out.itertuples(), strict=True):
        assert (row.status, row.detail[: len(detail)]) == (status, detail), row.detail
        assert (row.image != b"") == (status == "repaired")
    assert out["image"][0] == out["image"][1] == out["image"][2] == out["image"][17]

    # a column of one unexpected type: every row says so (a numpy column was "no mask")
    masks = pd.Series([np.zeros((40, 56), np.uint8)] * 2, dtype=object)
    out = load(saved_model).predict(pd.DataFrame({"image": [data, data], "mask": masks}))
    assert list(out["status"]) == ["failed", "failed"]
    assert out["detail"][0].startswith("mask: got numpy.ndarray")

    # other columns are not read; the answer follows the request's rows
    extra = pd.DataFrame({"image": [data, b"no image"], "mask": [mask, mask], "name": ["a", "b"]})
    out = load(saved_model).predict(extra)
    assert list(out.columns) == ["image", "format", "status", "detail"]
    assert list(out["status"]) == ["repaired", "failed"]


def test_a_served_detail_names_the_request_params_never_a_cli_flag(saved_model, tmp_path):
    """JPEG output's note, a float TIFF asked for as PNG, settings out of range: each says
    `params.format` (or `params.tile`), where the command's rows say `--format`."""
    from gan_dist.repair.files import Job, repair_files

    model = load(saved_model)
    floats = io.BytesIO()
    tifffile.imwrite(floats, np.linspace(-1, 1, 40 * 56, dtype=np.float32).reshape(40, 56))
    table = pd.DataFrame({"image": [jpeg(photo), floats.getvalue()], "mask": [mask, mask]})
    same, as_png = model.predict(table), model.predict(table, params={"format": "png"})
    assert same["status"][0] == "repaired"
    assert same["detail"][0].endswith("(params.format=png keeps them exact)")
    assert as_png["status"][1] == "failed"
    assert as_png["detail"][1] == ".png cannot hold float32 pixels; write .tif (params.format=tif)"
    refused = model.predict(table, params={"tile": 8, "overlap": -1, "batch": 0, "format": "gif"})
    assert refused["detail"][0] == (
        "params.format 'gif': use one of same, png, tif; params.tile 8: use 16 or more (px); "
        "params.overlap -1: use 0 or more (px; at most half the tile is used); "
        "params.batch 0: use 1 or more"
    )
    for rows in (same, as_png, refused):
        no_cli_flags(rows)

    # the command's own rows still name its options, after a served call in this thread
    (tmp_path / "photo.jpg").write_bytes(jpeg(photo))
    (tmp_path / "mask.png").write_bytes(mask)
    job = Job(tmp_path / "photo.jpg", tmp_path / "out.jpg", tmp_path / "mask.png")
    [result] = repair_files(
        lambda: model.unwrap_python_model().service.model, [job], 256, 32, 4, False
    )
    assert result.detail.endswith("(--format png keeps them exact)"), result.detail


@pytest.fixture(autouse=True)
def abandoned_rows_stop():
    """A row answered for at the deadline goes on in its thread until its next band: each
    test waits for those to stop (bounded), so that none still runs, and allocates, under a
    later test's measurements."""
    yield
    deadline = time.monotonic() + 120
    for worker in threading.enumerate():
        if worker.name == "gan-dist-serve-row":
            worker.join(max(deadline - time.monotonic(), 0))
            assert not worker.is_alive(), "an abandoned row did not stop within 120 s"


def test_a_row_that_cannot_finish_in_the_servers_time_is_not_started(saved_model, monkeypatch):
    """At the speed measured on an earlier request with the same tiles, a 4000 px square
    all hole in 16 px tiles needs minutes: refused at once, by name, with the rows around
    it repaired (the whole request was answered 504 after the timeout)."""
    monkeypatch.setenv(TIMEOUT_VARIABLE, "20")
    model = load(saved_model)
    tiles = {"tile": 16, "batch": 1}
    first = model.predict(
        pd.DataFrame({"image": [png(photo)], "mask": [holed(40, 56)]}), params=tiles
    )
    assert first["status"][0] == "repaired"  # and its speed measured
    big = np.zeros((4000, 4000, 3), np.uint8)
    table = pd.DataFrame(
        {"image": [png(photo), png(big), png(photo)], "mask": [mask, holed(4000, 4000), mask]}
    )
    began = time.monotonic()
    out = model.predict(table, params=tiles)
    assert time.monotonic() - began < 16  # 80% of the timeout, for the rows
    assert list(out["status"]) == ["repaired", "failed", "repaired"], list(out["detail"])
    assert re.fullmatch(
        r"not started: at the speed measured here this 4000x4000 image needs about [\d.]+ s "
        r"and [\d.]+ s are left of the server's 20 s request timeout; send fewer or smaller "
        r"images per request, or start the server with a longer timeout "
        r"\(mlflow models serve -t SECONDS\)",
        out["detail"][1],
    ), out["detail"][1]


def test_a_row_found_too_slow_as_it_runs_is_stopped(saved_model, monkeypatch):
    """No speed known yet: the row starts, and after a few bands of tiles the rest is seen
    to need more than the time left; it stops there and the next row is repaired."""
    monkeypatch.setenv(TIMEOUT_VARIABLE, "30")
    big = np.zeros((4000, 4000, 3), np.uint8)
    table = pd.DataFrame({"image": [png(big), png(photo)], "mask": [holed(4000, 4000), mask]})
    began = time.monotonic()
    out = load(saved_model).predict(table, params={"tile": 16, "batch": 1})
    assert time.monotonic() - began < 24
    assert list(out["status"]) == ["failed", "repaired"], list(out["detail"])
    assert re.fullmatch(
        r"stopped after \d+ s at row \d+ of 4000: at the speed of its rows so far the rest "
        r"needs about [\d.]+ s and [\d.]+ s are left of the server's 30 s request timeout; "
        r"send fewer or smaller images per request, or start the server with a longer "
        r"timeout \(mlflow models serve -t SECONDS\)",
        out["detail"][0],
    ), out["detail"][0]


def test_a_row_still_running_at_the_deadline_is_answered_for(saved_model, monkeypatch):
    """One band of 3,750 tiles cannot finish in 0.8 s, nor be measured before: the answer
    comes at the deadline with that row failed (the request used to be lost to a 504)."""
    monkeypatch.setenv(TIMEOUT_VARIABLE, "1")
    strip = np.zeros((16, 30000, 3), np.uint8)
    table = pd.DataFrame({"image": [png(strip), png(photo)], "mask": [holed(16, 30000), mask]})
    model = load(saved_model)
    began = time.monotonic()
    out = model.predict(table, params={"tile": 16, "batch": 1})
    assert time.monotonic() - began < 1.0  # the server's timeout
    assert list(out["status"]) == ["failed", "failed"], list(out["detail"])
    assert re.fullmatch(
        r"stopped after \d s before its first band of tiles was done: the server's 1 s request "
        r"timeout was near; send fewer or smaller images per request, or start the server "
        r"with a longer timeout \(mlflow models serve -t SECONDS\)",
        out["detail"][0],
    ), out["detail"][0]
    assert "(mlflow models serve -t SECONDS)" in out["detail"][1]


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


def readme_serving() -> tuple[str, str]:
    """The README's serving commands: the `mlflow models serve` line, and the rest of the
    block (write the request, post it, save the answer) as a bash script."""
    text = README.read_text()
    section = text[text.index("**Serving over REST.**") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("\n```\n")]
    serve, script = block.split("\n", 1)
    assert serve.startswith("mlflow models serve "), serve
    return serve, script


class ModelServer:
    """The README's `mlflow models serve` command, for model `uri` on a free port of
    127.0.0.1, in its own process group so that its uvicorn worker stops with it."""

    README_MODEL, README_PORT = "models:/medical-repair@champion", "5001"

    def __init__(self, uri: str, store: str, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.bin_dir = str(Path(sys.executable).parent)  # uvicorn's, as in an active venv
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": store,
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
        }
        self.env.pop(TIMEOUT_VARIABLE, None)  # the server's default, as the README's has
        command = shlex.split(self.local(readme_serving()[0].replace(self.README_MODEL, uri)))
        self.log = log
        self.proc = subprocess.Popen(
            [str(Path(self.bin_dir) / command[0]), *command[1:]],
            stdout=open(log, "ab"),  # noqa: SIM115 - lives with the server
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )

    def local(self, text: str) -> str:
        """The README's commands, with this server's port for the README's."""
        assert self.README_PORT in text
        return text.replace(self.README_PORT, str(self.port))

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


@pytest.mark.integration
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
    no_cli_flags(answers)
    assert garbage["detail"].startswith("image: not a recognised image file")
    assert wrong_mask["status"] == "failed"
    assert wrong_mask["detail"] == "mask mask.png: 90x10, the image is 90x70"
    assert no_mask["status"] == "failed" and no_mask["detail"].startswith("no mask: ")
    # settings the command refuses are refused by name, before anything is decoded (tile 0
    # and batch -3 were repaired, or failed with a raw islice error)
    (row,) = refused
    assert row["status"] == "failed" and row["detail"] == (
        "params.format 'gif': use one of same, png, tif; params.tile 0: use 16 or more (px); "
        "params.batch -3: use 1 or more"
    )


@pytest.mark.integration
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


@pytest.mark.integration
def test_the_readme_commands_serve_a_real_photo_and_answer_in_time(registered, tmp_path):
    """The README's commands, as written (its model and port aside), for a real photo: a
    512 px astronaut as TIFF, 768 KiB (curl with the base64 in its argument failed with
    `Argument list too long`). On the same server: a JPEG's note names `params.format`; a
    row that cannot finish within the server's 60 s fails by name at once, the rows
    around it repaired (the request was answered 504, every row lost)."""
    import skimage.data

    photo_in = skimage.data.astronaut()
    tifffile.imwrite(tmp_path / "scan.tif", photo_in)
    assert (tmp_path / "scan.tif").stat().st_size > 128 * 1024
    (tmp_path / "hole.png").write_bytes(holed(512, 512, np.s_[200:260, 180:300]))
    server = ModelServer("models:/serve-test@champion", registered, tmp_path / "serve.log")
    try:
        server.wait_ready()
        script = server.local(readme_serving()[1])
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        tiles = {"tile": 16, "batch": 1}
        small = {"image": png(photo), "mask": mask}
        first = server.invoke(
            [{"image": png(np.zeros((64, 64, 3), np.uint8)), "mask": holed(64, 64)},
             {"image": jpeg(photo), "mask": mask, "name": b"ignored"}],
            tiles,
        )  # fmt: skip
        began = time.monotonic()
        timed = server.invoke(
            [small, {"image": png(np.zeros((4000, 4000, 3), np.uint8)), "mask": holed(4000, 4000)},
             small],
            tiles,
        )  # fmt: skip
        answered = time.monotonic() - began
    finally:
        server.stop()

    assert ran.stdout.startswith("0 repaired 2.7% of pixels"), ran.stdout
    repaired = tifffile.imread(tmp_path / "repaired-0.tif")
    assert repaired.shape == photo_in.shape and repaired.dtype == np.uint8
    known = np.ones((512, 512), bool)
    known[200:260, 180:300] = False
    assert np.array_equal(repaired[known], photo_in[known])

    assert [r["status"] for r in first] == ["repaired", "repaired"], first
    assert first[1]["detail"].endswith("(params.format=png keeps them exact)"), first[1]["detail"]
    assert answered < 48
    assert [r["status"] for r in timed] == ["repaired", "failed", "repaired"], timed
    assert re.fullmatch(
        r"not started: at the speed measured here this 4000x4000 image needs about [\d.]+ s "
        r"and [\d.]+ s are left of the server's 60 s request timeout; send fewer or smaller "
        r"images per request, or start the server with a longer timeout "
        r"\(mlflow models serve -t SECONDS\)",
        timed[1]["detail"],
    ), timed[1]["detail"]
    no_cli_flags(first + timed)
