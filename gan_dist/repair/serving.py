"""The served model's side of a request (what `pyfunc.py` hands each table to, in
`mlflow models serve` or `mlflow.pyfunc.load_model(uri).predict`): the table's cells as
file bytes, and the time a request may take. Each row is then `repair_bytes`.

- Cells: `image` and `mask` hold a file's bytes (bytes, bytearray or memoryview). A
  missing mask (None, NaN, empty bytes, or no `mask` column) is no mask. Any other cell (a
  numpy array, a PIL image, a path or base64 string, a number, a missing image) fails its
  own row, naming the type it got and what to send; the other rows are still repaired.
  Other columns are not read (MLflow's signature check drops them, with a warning); the
  answer has one row per request row, in order.
- Time: the scoring server answers 504 and loses every row of a request that outlives its
  timeout (`mlflow models serve -t SECONDS`, or MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT; 60 s
  by default), while it goes on computing. Where that variable is set (the server sets it
  for itself) the rows get `TIME_SHARE` of it, counted from the start of `predict`; the
  rest is for reading the request and writing the answer. A row is failed, its detail
  naming the limit and what to do, and the rows done are answered, when:
  - before it is decoded, the net's work on it (the tiles, from the image's size and the
    mask's holes) at the speed measured on earlier rows with the same tiles needs more
    than the time left: it is not started;
  - while it runs, at the speed of its own bands of tiles so far, the rest needs more than
    the time left: it is stopped there;
  - the deadline comes first (a first band or a hole's prefill that takes longer than
    the time left): the answer is sent without it, and its repair stops at its next band.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gan_dist.core.errors import GanDistError

if TYPE_CHECKING:
    import pandas as pd

    from gan_dist.repair.files import FileResult
    from gan_dist.repair.model_file import RepairModel

TIME_SHARE = 0.8  # of the server's request timeout, for repairing rows
IMAGE_KINDS = "PNG, JPEG, TIFF, BMP, WebP or DICOM"
MASK_KINDS = "PNG, TIFF..."
COLUMNS = ["image", "format", "status", "detail"]  # the answer's, as in `models.signature`
SHORTEN = (  # what a row's detail says to do when the request's time runs out
    "send fewer or smaller images per request, or start the server with a longer timeout "
    "(mlflow models serve -t SECONDS)"
)


def file_bytes(value: Any, column: str) -> bytes | None:
    """A table cell as the bytes of a file: bytes, bytearray and memoryview as they are;
    None, NaN (pandas' missing value) or empty bytes -> None (no file). Raises
    GanDistError naming the column, the type it got and what to send for anything else
    (a numpy array, a PIL image, a str path or base64 text, a number)."""
    import pandas as pd

    if isinstance(value, bytes):
        return value or None
    if isinstance(value, bytearray | memoryview):
        return bytes(value) or None
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    kind = type(value)
    name = kind.__qualname__
    name = name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"
    what = f"send the {column} file's bytes ({IMAGE_KINDS if column == 'image' else MASK_KINDS})"
    if isinstance(value, str):
        what += ", not a path or base64 text (read the file: Path(name).read_bytes())"
    elif isinstance(value, np.ndarray) or kind.__module__.startswith("PIL."):
        what += ", not decoded pixels (they carry no format or depth)"
    raise GanDistError(f"{column}: got {name}; {what}")


@dataclass
class Budget:
    """The time a request's rows may take: until `deadline` (time.monotonic()), set by the
    server's request `timeout` (s)."""

    timeout: float
    deadline: float

    @classmethod
    def of_request(cls, started: float) -> Budget | None:
        """The budget of a request that `predict` began at `started` (time.monotonic()),
        from the variable the scoring server reads; None where it is not set (a Python
        caller, who waits as long as it takes)."""
        from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT as timeout

        if not timeout.defined:
            return None
        seconds = float(timeout.get())
        return cls(seconds, started + TIME_SHARE * seconds)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def limit(self) -> str:
        return f"the server's {self.timeout:g} s request timeout"


class RepairService:
    """A loaded model answering tables of image and mask bytes, one row per image. It keeps
    the speeds it measured on this machine for later requests: seconds per pixel the net
    runs, for each tile shape, batch and precision."""

    def __init__(self, model: RepairModel) -> None:
        self.model = model
        self.speeds: dict[tuple[int, int, int, str], float] = {}

    def predict(self, table: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """table: an `image` column (and optionally `mask`) of file bytes -> a table with
        one row per input row, in order: `image` (the repaired file's bytes, empty when the
        row failed), `format` (its suffix), `status` and `detail`. params: `format`,
        `tile`, `overlap`, `batch` (`gan-dist repair`'s defaults). A bad cell, setting or
        image fails its row only; raises GanDistError only for a table without an `image`
        column."""
        import pandas as pd

        from gan_dist.repair.files import BATCH, OVERLAP, TILE, FileResult, repair_bytes

        budget = Budget.of_request(time.monotonic())
        if "image" not in table:
            raise GanDistError(
                f"the table has no image column (it has {', '.join(map(str, table)) or 'none'}); "
                "send one row per image with the image file's bytes in `image`"
            )
        settings = params or {}
        fmt = str(settings.get("format", "same"))
        tile, overlap, batch, problem = _whole_numbers(
            settings, {"tile": TILE, "overlap": OVERLAP, "batch": BATCH}
        )
        masks = table["mask"] if "mask" in table else [None] * len(table)
        rows = []
        for image_cell, mask_cell in zip(table["image"], masks, strict=True):
            try:
                if problem:
                    raise GanDistError(problem)
                image = file_bytes(image_cell, "image")
                mask = file_bytes(mask_cell, "mask")
                if image is None:
                    raise GanDistError(
                        f"image: empty or missing; send the image file's bytes ({IMAGE_KINDS})"
                    )
                if budget is None:
                    result, data = repair_bytes(self.model, image, mask, fmt, tile, overlap, batch)
                else:
                    timed = _Timed(self, budget, tile, overlap, batch)
                    result, data = timed.run(
                        partial(
                            repair_bytes, self.model, image, mask, fmt, tile, overlap, batch,
                            **timed.hooks(),
                        )
                    )  # fmt: skip
            except GanDistError as exc:
                result, data = FileResult(Path("image"), None, "failed", str(exc)), b""
            suffix = result.output.suffix if result.output is not None else ""
            rows.append(
                {"image": data, "format": suffix, "status": result.status, "detail": result.detail}
            )
        return pd.DataFrame(rows, columns=COLUMNS)


class _Timed:
    """One row under a request's budget: `run` repairs it in a thread of its own, with
    `hooks()` as `repair_bytes`' `before` and `on_rows`, and answers for it at the
    deadline whether it is done or not."""

    def __init__(
        self, service: RepairService, budget: Budget, tile: int, overlap: int, batch: int
    ) -> None:
        self.service, self.budget = service, budget
        self.tile, self.overlap, self.batch = tile, overlap, batch
        self.tops: list[int] = []  # each band's first row
        self.work: list[int] = [0]  # pixels the net runs in the bands before each band
        self.empty: list[int] = [0]  # bands without net work before each band
        self.key: tuple[int, int, int, str] | None = None  # tile shape, batch, precision
        self.started = time.monotonic()
        self.last, self.banded, self.done_bands = self.started, False, 0  # `on_rows` so far
        self.net_seconds, self.net_pixels = 0.0, 0  # timed bands with net work
        self.empty_seconds, self.empty_count = 0.0, 0  # timed bands without
        self.progress = ""  # "at row 512 of 2048", once a band is done
        self.abandoned = threading.Event()

    def hooks(self) -> dict:
        return {"before": self.before, "on_rows": self.on_rows}

    def run(self, repair: Callable[[], tuple[FileResult, bytes]]) -> tuple[FileResult, bytes]:
        """`repair()`'s answer, from a thread of its own; at the deadline the row is
        answered for instead (GanDistError), and the repair stops at its next band."""
        if self.budget.left() <= 0:
            raise GanDistError(
                f"not started: the rows before it used {self.budget.limit()}; {SHORTEN}"
            )
        answer: list = []

        def repair_row() -> None:
            try:
                answer.append(repair())
            except BaseException as exc:  # handed to the thread that answers for the row
                answer.append(exc)

        # not a daemon: a process that ends waits for it to stop at its next band, rather
        # than tearing down torch under it
        worker = threading.Thread(target=repair_row, name="gan-dist-serve-row")
        worker.start()
        worker.join(max(self.budget.left(), 0))
        if worker.is_alive():
            self.abandoned.set()
            raise GanDistError(
                f"stopped after {time.monotonic() - self.started:.0f} s "
                f"{self.progress or 'before its first band of tiles was done'}: "
                f"{self.budget.limit()} was near; {SHORTEN}"
            )
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]

    def before(self, image: Path, mask: Path | None) -> None:
        """Refuses the row when, at the speed measured on earlier rows with the same tiles,
        the net's work on it needs more than the time left."""
        from contextlib import ExitStack

        from gan_dist.data.images import DEFAULT_MAX_PIXELS, probe
        from gan_dist.repair.files import read_mask
        from gan_dist.repair.tiles import band_work, tile_shape

        model = self.service.model
        with ExitStack() as stack:
            try:
                width, height, _, depth = probe(image, DEFAULT_MAX_PIXELS, check_values=False)
                holes = None
                if mask is not None and model.spec["model"]["composite"]:
                    holes, _ = read_mask(mask, (height, width), DEFAULT_MAX_PIXELS, stack)
                bands = band_work(model, height, width, holes, self.tile, self.overlap)
                th, tw, _ = tile_shape(model, height, width, self.tile, self.overlap)
            except Exception:  # the repair fails the row in its own words
                return
        self.tops = [top for top, _ in bands]
        self.work = [0, *accumulate(work for _, work in bands)]
        self.empty = [0, *accumulate(not work for _, work in bands)]
        precision = model.precision_for(np.uint8 if depth <= 8 else np.uint16)
        self.key = (th, tw, self.batch, precision)
        speed, left = self.service.speeds.get(self.key), self.budget.left()
        need = self.work[-1] * (speed or 0.0)
        if need > left:
            raise GanDistError(
                f"not started: at the speed measured here this {width}x{height} image needs "
                f"about {_seconds(need)} and {_seconds(left)} are left of "
                f"{self.budget.limit()}; {SHORTEN}"
            )

    def on_rows(self, done: int, height: int) -> None:
        """After each band (or run of rows without holes) up to row `done`: its time, for
        the speed of the net's work and of bands without any (the first band's time, which
        includes decoding, is left out); the net's speed is kept for later rows. Stops the
        row when it was abandoned, or when at those speeds the rest needs more than the
        time left."""
        now = time.monotonic()
        seconds, self.last = now - self.last, now
        self.progress = f"at row {done} of {height}"
        if self.abandoned.is_set():
            raise GanDistError("abandoned at the deadline")  # the answer has gone without it
        done_bands = bisect_left(self.tops, done)  # those starting above row `done`
        work = self.work[done_bands] - self.work[self.done_bands]
        empty = self.empty[done_bands] - self.empty[self.done_bands]
        self.done_bands = done_bands
        if not self.banded:
            self.banded = True
        elif work:
            self.net_seconds += seconds
            self.net_pixels += work
        elif empty:
            self.empty_seconds += seconds
            self.empty_count += empty
        rest = 0.0
        if self.net_pixels and self.key is not None:
            self.service.speeds[self.key] = speed = self.net_seconds / self.net_pixels
            rest += (self.work[-1] - self.work[done_bands]) * speed
        if self.empty_count:
            per_band = self.empty_seconds / self.empty_count
            rest += (self.empty[-1] - self.empty[done_bands]) * per_band
        left = self.budget.deadline - now
        if done < height and rest > left:
            raise GanDistError(
                f"stopped after {now - self.started:.0f} s {self.progress}: at the speed of "
                f"its rows so far the rest needs about {_seconds(rest)} and "
                f"{_seconds(left)} are left of {self.budget.limit()}; {SHORTEN}"
            )


def _seconds(value: float) -> str:
    return f"{max(value, 0):.{1 if value < 10 else 0}f} s"


def _whole_numbers(settings: dict, defaults: dict[str, int]) -> tuple:
    """The settings named in `defaults` as ints (their default where not given), then what
    is wrong with those that are not whole numbers (an empty string if nothing)."""
    values, problems = [], []
    for name, default in defaults.items():
        value = settings.get(name, default)
        try:
            number = int(value)
            if number != value:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"params.{name} {value!r}: use a whole number")
            number = default
        values.append(number)
    return (*values, "; ".join(problems))


__all__ = ["Budget", "RepairService", "file_bytes"]
