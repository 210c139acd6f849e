"""MLflow tracking from rank 0, off the training thread, never fatal.

Every call only queues work; one background thread talks to MLflow. When the store is
unreachable (server down, network timeout) the thread keeps the unsent work and retries with
back-off, so metrics logged during an outage arrive once the server is back; training never
waits on it. At the end, `close` waits a bounded time and reports what could not be sent.

Other ranks get a `Tracker` with `enabled=False`, whose calls do nothing: every rank that
starts an MLflow run makes its own run.

Every use of a store goes through `open_store`. For an embedded sqlite store it makes
several jobs starting at once on one `mlflow.db` (a sweep, a SLURM array) safe: MLflow
creates and migrates a fresh database in place with no lock between processes, and two
processes doing so at once leave it half-migrated for good. Here a new store is built in a
temporary file and linked into place only when complete, under an OS file lock beside the
database, and read-only commands never create one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from gan_dist.core.errors import GanDistError

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

    from gan_dist.config.recipe import Recipe

log = logging.getLogger("gan_dist.track")

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_QUEUED_IMAGES = 32  # sample grids are large; metrics are small and always kept
BACKOFF_S = (1, 2, 5, 10, 30)
START = "run start"  # the first job of every tracker
STORE_LOCK_TIMEOUT_S = 300.0  # creating and migrating a store takes seconds; a queue of jobs more
# Errors a store gives a writer that lost a race to another one: worth sending again, even
# when MLflow words them as a 4xx (it maps some SQLAlchemy errors to BAD_REQUEST).
RACE_ERRORS = (
    "database is locked",
    "database table is locked",
    "deadlock detected",
    "could not serialize access",
)


def tracking_uri(recipe: Recipe | None = None) -> str:
    """$MLFLOW_TRACKING_URI wins (a cluster sets it once for everyone), then the recipe,
    then the embedded store in the working directory."""
    from_recipe = recipe.tracking.uri if recipe is not None else None
    return os.environ.get("MLFLOW_TRACKING_URI") or from_recipe or DEFAULT_URI


def quiet_mlflow() -> None:
    """MLflow's INFO lines (database migrations, download bars) are noise in our output.
    After importing mlflow: its import sets up its logger and would undo this."""
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # a store failure (a full disk) is logged by MLflow with a ~90-line SQL traceback each
    # time; the tracker says it in one line and retries
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested recipe -> {"optim.generator.lr": "0.0002", ...}, the form MLflow params take."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


@dataclass
class _Job:
    kind: str  # "metrics" | "image" | "other"
    run: Callable[[], None]
    what: str


@dataclass
class Dropped:
    metrics: int = 0
    images: int = 0
    other: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.images or self.other)

    def __str__(self) -> str:
        parts = []
        if self.metrics:
            parts.append(f"{self.metrics} metric batches")
        if self.images:
            parts.append(f"{self.images} sample grids")
        parts += self.other
        return ", ".join(parts)


class Tracker:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        run_id: str | None,
        enabled: bool,
        context: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        resume_tags: dict[str, str] | None = None,
    ) -> None:
        """`tags`: set on a new run (a resumed one has them already); `resume_tags`: set on
        the run either way (what this resume changed: MLflow params cannot change)."""
        self.enabled = enabled and recipe.tracking.enabled
        self.run_id = run_id
        self.status = "FINISHED"  # what the run is marked when the tracker closes
        self.flush_timeout = recipe.tracking.flush_timeout_s
        self.uri = tracking_uri(recipe)
        self.dropped = Dropped()
        self._failing_since: float | None = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._images_queued = 0
        if not self.enabled:
            return
        # MLflow's own HTTP retries wait minutes by default; ours are in the worker instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._client = None
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()
        self._submit(
            "other",
            lambda: self._start(recipe, run_dir, context or {}, tags or {}, resume_tags or {}),
            START,
        )

    # --- what the trainer calls ----------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled or not metrics:
            return
        stamp = int(time.time() * 1000)

        def send() -> None:
            from mlflow.entities import Metric

            batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
            self._mlflow().log_batch(self.run_id, metrics=batch, synchronous=True)

        self._submit("metrics", send, f"metrics at step {step}")

    def log_image(
        self, image: np.ndarray, key: str, step: int, newest: str = "", about: str = ""
    ) -> None:
        """An 8-bit picture shown in the run's image panel with a step slider. `newest`: also
        keep it as the artifact of that name (replaced at every call) and show it at the top
        of the run's Overview page (its description), with `key`, `step` and `about` (what
        it shows) in words. The
        UI's image panel opens at step 0 and shows a later step only when it is moved, so
        without this nobody sees the newest picture on first view."""
        if not self.enabled:
            return
        with self._lock:
            if self._images_queued >= MAX_QUEUED_IMAGES:
                self.dropped.images += 1
                return
            self._images_queued += 1

        def send() -> None:
            client = self._mlflow()
            client.log_image(self.run_id, image, key=key, step=step, synchronous=True)
            if newest:
                _show_newest(client, self.run_id, image, newest, key, step, about)

        self._submit("image", send, f"{key} at step {step}")

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if not self.enabled:
            return
        self._submit(
            "other",
            lambda: self._mlflow().log_artifact(self.run_id, str(path), folder),
            f"artifact {path.name}",
        )

    @property
    def start_failed(self) -> str | None:
        """Why this job's MLflow run could never be started (refused, or the store never
        answered), else None; None also where this rank does not track. Final once `close`
        has returned. A job in a sweep whose run never started has no record anywhere and
        would pass for a success: the trainer ends such a job loudly and non-zero."""
        if not self.enabled:
            return None
        return self._start_failed

    def wait_for_run_id(self, timeout: float) -> str | None:
        """The run id once the run exists (checkpoints carry it so a resumed job continues
        the same run); None if the store did not answer in time."""
        deadline = time.monotonic() + timeout
        while self.enabled and self.run_id is None and time.monotonic() < deadline:
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        return self.run_id

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close("FAILED" if kind is not None else self.status, self.flush_timeout)

    def close(self, status: str, timeout: float) -> Dropped:
        """Flush what is queued (at most `timeout` seconds), end the run with `status`
        (FINISHED, KILLED for a preempted job that will be resumed, FAILED) and say what
        was lost."""
        if not self.enabled:
            return self.dropped
        self._submit(
            "other",
            lambda: self._mlflow().set_terminated(self.run_id, status),
            "run status",
        )
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stopping = True
            for job in [self._pending, *self._drain()]:
                if job is not None:
                    self._count_dropped(job)
        if not self._started and self._start_failed is None:
            self._start_failed = (
                f"MLflow at {self.uri} did not start the run within {timeout:.0f} s"
                + (f" (last error: {self._last_error})" if self._last_error else "")
            )
        if self.dropped:
            log.warning(
                "MLflow (%s) did not receive: %s. Training itself was not affected.",
                self.uri,
                self.dropped,
            )
        return self.dropped

    # --- the worker ------------------------------------------------------------------------

    _stopping = False
    _pending: _Job | None = None
    _started = False  # the run start went through
    experiment_id: str | None = None  # known once the run has started
    _start_failed: str | None = None
    _last_error: str | None = None

    def _submit(self, kind: str, run: Callable[[], None], what: str) -> None:
        self._queue.put(_Job(kind, run, what))

    def _work(self) -> None:
        """Jobs in order; a failing job is retried (the run start first of all, so every
        later job has a run id) and everything behind it waits."""
        tries = 0
        while not self._stopping:
            if self._pending is None:
                self._pending = self._queue.get()
                if self._pending is None:
                    return
                tries = 0
            pending = self._pending
            if self._start_failed is not None:  # no run to log into, ever
                self._count_dropped(pending)
                self._done(pending)
                continue
            try:
                pending.run()
            except Exception as exc:  # whatever the store does, training goes on
                if _refused(exc):  # the store answered "no": sending again will not help
                    log.warning("MLflow refused %s: %s", pending.what, str(exc)[:300])
                    self._count_dropped(pending)
                    if pending.what == START and self.run_id is None:
                        self._start_failed = f"MLflow at {self.uri} refused: {_first_line(exc)}"
                    elif pending.what == START:  # the run exists; only its params were refused
                        self._started = True
                    self._done(pending)
                    continue
                self._last_error = f"{type(exc).__name__}: {_first_line(exc)}"
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning(
                        "MLflow at %s failed (%s); keeping unsent logs and retrying",
                        self.uri,
                        self._last_error[:300],
                    )
                time.sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
                tries += 1
                continue
            if self._failing_since is not None:
                log.warning(
                    "MLflow at %s reachable again after %.0f s; sending what was kept",
                    self.uri,
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
            self._done(pending)

    def _done(self, job: _Job) -> None:
        if job.kind == "image":
            with self._lock:
                self._images_queued -= 1
        self._pending = None

    def _drain(self) -> list[_Job]:
        jobs = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def _count_dropped(self, job: _Job) -> None:
        if job.kind == "metrics":
            self.dropped.metrics += 1
        elif job.kind == "image":
            self.dropped.images += 1
        else:
            self.dropped.other.append(job.what)

    def _mlflow(self):
        if self._client is None:
            self._client = open_store(self.uri)
        return self._client

    def _start(
        self,
        recipe: Recipe,
        run_dir: Path,
        context: dict[str, Any],
        tags: dict[str, str],
        resume_tags: dict[str, str],
    ) -> None:
        from mlflow.entities import Param, RunTag

        client = self._mlflow()
        if self.run_id is not None and not run_exists(client, self.run_id):
            log.warning(
                "MLflow run %s (from the checkpoint) is not in %s; starting a new run",
                self.run_id,
                self.uri,
            )
            self.run_id = None
        if self.run_id is not None:  # a resumed job: the same run, running again
            client.update_run(self.run_id, status="RUNNING")
            known = client.get_run(self.run_id).data.params
        else:
            experiment = experiment_id(client, recipe.tracking.experiment or recipe.name)
            run = client.create_run(
                experiment,
                run_name=run_dir.name,
                tags={"gan_dist.run_dir": str(run_dir.resolve())} | tags,
            )
            self.run_id, known = run.info.run_id, {}
        self.experiment_id = client.get_run(self.run_id).info.experiment_id
        params = run_params(recipe) | {"world_size": str(context.get("world_size", 1))}
        about = {k: str(v) for k, v in context.items() if k != "world_size"} | _versions()
        client.log_batch(
            self.run_id, tags=[RunTag(k, v) for k, v in about.items()], synchronous=True
        )
        fresh = [Param(k, v) for k, v in params.items() if k not in known]
        for i in range(0, len(fresh), 100):  # MLflow takes at most 100 params per call
            client.log_batch(self.run_id, params=fresh[i : i + 100], synchronous=True)
        changed = {k: v for k, v in params.items() if k in known and known[k] != v}
        for key, value in changed.items():  # params are immutable: record the change
            client.set_tag(self.run_id, f"changed_on_resume.{key}", f"{known[key]} -> {value}")
        if resume_tags:
            notes = [RunTag(k, v) for k, v in resume_tags.items()]
            for i in range(0, len(notes), 100):
                client.log_batch(self.run_id, tags=notes[i : i + 100], synchronous=True)
        self._started = True


NOTE_TAG = "mlflow.note.content"  # the run's description, markdown, on its Overview page


def _show_newest(
    client, run_id: str, image: np.ndarray, name: str, key: str, step: int, about: str
) -> None:
    """`image` as the run's artifact `name` and, unless someone else wrote the run's
    description, as that description: the picture first (the page shows the top of a long
    description), then what it is."""
    import tempfile

    from gan_dist.data.images import write_png_atomic

    with tempfile.TemporaryDirectory(prefix="gan-dist-grid-") as tmp:
        path = Path(tmp) / name
        write_png_atomic(path, image)
        client.log_artifact(run_id, str(path))
    picture = f"![{key}](get-artifact?path={name}&run_uuid={run_id})"
    current = client.get_run(run_id).data.tags.get(NOTE_TAG, "")
    if current and not current.startswith(f"![{key}]"):
        return  # the user's own description stays
    words = (
        f"**{key} at step {step:,}**: {about or 'damaged | repaired | original'}. The "
        f"grid of every step: Model metrics, `{key}` (move its step slider); this one is the "
        f"artifact `{name}`."
    )
    client.set_tag(run_id, NOTE_TAG, f"{picture}\n\n{words}\n")


# What a run is, at a glance, as MLflow params: the UI prints a run's params under every image
# card, and the whole flattened recipe (over a hundred values) pushed the repair grid out of its
# card. The whole resolved recipe is the run's recipe.yaml artifact.
RUN_PARAMS = (
    "data.image_size",
    "model.generator.name",
    "model.discriminator.name",
    "objective.adversarial",
    "optim.generator.lr",
    "seed",
)


def run_params(recipe: Recipe) -> dict[str, str]:
    """The MLflow params of a run (RUN_PARAMS), as text."""
    flat = flatten(recipe.model_dump(mode="json"))
    return {k: flat[k] for k in RUN_PARAMS}


# --- stores ----------------------------------------------------------------------------------

_opened: set[str] = set()  # sqlite URIs whose store this process has opened under the lock
_opened_lock = threading.Lock()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, absolute (a relative one is read from the
    working directory, as SQLAlchemy does); None for a server, another database, or memory."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(os.path.abspath(path))


def open_store(uri: str, create: bool = True) -> MlflowClient:
    """A client on `uri` whose store is ready to use.

    For a sqlite store the first opening in a process happens under an OS file lock beside
    the database (`mlflow.db.lock`): MLflow caches its store per URI, so once this process has
    built it (and any migration it ran is complete), later clients never migrate again, and
    the lock makes the first construction of N processes happen one at a time. A missing
    store is created whole or not at all (see `_create_sqlite_store`), and only if `create`:
    read-only uses (listing, promoting, loading a model) fail with a GanDistError saying
    where they looked instead of leaving an empty new database behind."""
    from mlflow import MlflowClient

    quiet_mlflow()
    db = sqlite_path(uri)
    if db is not None:
        with _opened_lock:
            if uri not in _opened:
                _open_sqlite(uri, db, create)
                _opened.add(uri)
    try:
        return MlflowClient(uri)
    except Exception as exc:  # a file store (refused by MLflow 3), an unknown scheme
        raise GanDistError(
            f"tracking URI {uri}: {_first_line(exc)}; use sqlite:///PATH/mlflow.db or an "
            "http(s):// MLflow server (MLFLOW_TRACKING_URI, --tracking-uri)"
        ) from None


def _open_sqlite(uri: str, db: Path, create: bool) -> None:
    from filelock import FileLock, Timeout
    from mlflow import MlflowClient

    if not create and not _store_exists(db):
        raise GanDistError(no_store_message(uri, db))
    made = _make_parents(db) if create else []
    lock = FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise GanDistError(
            f"{db}: another process has held {lock.lock_file} for {STORE_LOCK_TIMEOUT_S:.0f} s "
            "while creating or opening this MLflow store; is one hung?"
        ) from None
    except OSError as exc:  # no lock file can be made here (a read-only folder, a full disk)
        if not _store_exists(db):
            _remove_empty(made)
            raise GanDistError(_cannot_create(db, exc)) from None
        lock = None  # the store exists: using it needs no turn-taking
    try:
        if not _store_exists(db):
            if not create:
                raise GanDistError(no_store_message(uri, db))
            _create_sqlite_store(db, made)
        try:  # builds MLflow's cached store for this URI (a migration, if one is due)
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:
            raise GanDistError(
                f"the MLflow tracking store {db} cannot be opened ({_first_line(exc)})"
            ) from None
    finally:
        if lock is not None:
            lock.release()


def _store_exists(db: Path) -> bool:
    """An empty file is no store (sqlite creates one on connecting; an interrupted creation
    by an older gan-dist, or by MLflow itself, can leave one)."""
    try:
        return db.stat().st_size > 0
    except FileNotFoundError:
        return False


def no_store_message(uri: str, db: Path) -> str:
    origin = ""
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        origin = ", from $MLFLOW_TRACKING_URI"
    elif uri == DEFAULT_URI:
        origin = ", the default"
    what = "is empty" if db.is_file() else "does not exist"
    return (
        f"no MLflow tracking store at {db} (tracking URI {uri}{origin}): the file {what}; "
        "point at your store with MLFLOW_TRACKING_URI=... or --tracking-uri "
        "(sqlite:////abs/path/mlflow.db or http://server:5000)"
    )


def _create_sqlite_store(db: Path, made: list[Path]) -> None:
    """Build a new store in a temporary file beside `db` and link it into place once MLflow
    has created and migrated every table, so that a full disk or a killed process can never
    leave a half-created `mlflow.db` that every later command trips over. On failure nothing
    that did not exist before is left (the lock file aside), and the error names the free
    space."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in db.parent.glob(f".{db.name}.*.creating*"):  # a killed creator's; we hold
        with contextlib.suppress(FileNotFoundError):  # the lock, so none is in use
            stale.unlink()
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    tmp_uri = f"sqlite:///{tmp}"
    failure: Exception | None = None
    try:
        try:
            store = SqlAlchemyStore(tmp_uri, str(db.parent / "mlruns"))
            store.engine.dispose()
            if db.exists():  # an empty file (see _store_exists): nothing in it to lose
                os.replace(tmp, db)
            else:
                try:
                    os.link(tmp, db)  # never replaces a store another process just made
                except FileExistsError:
                    pass
                except OSError:  # a filesystem without hard links
                    os.replace(tmp, db)
        except Exception as exc:
            failure = exc
    finally:  # also when interrupted: the temporary file never outlives this call
        # MLflow keeps an engine per URI for the life of the process; this one is done
        engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)
        if engine is not None:
            engine.dispose()
        for end in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{tmp}{end}").unlink()
    if failure is not None:
        _remove_empty(made)
        raise GanDistError(_cannot_create(db, failure))


def _cannot_create(db: Path, exc: Exception) -> str:
    where = next((p for p in (db.parent, *db.parent.parents) if p.is_dir()), Path("/"))
    free = shutil.disk_usage(where).free
    if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        fix = "make the folder writable or point MLFLOW_TRACKING_URI elsewhere"
    else:
        fix = "free some space or point MLFLOW_TRACKING_URI elsewhere"
    return (
        f"could not create the MLflow tracking store {db} ({_first_line(exc)}); "
        f"{_size(free)} free on {where} (a new store takes about 1 MiB); nothing was left "
        f"behind: {fix}"
    )


def _make_parents(db: Path) -> list[Path]:
    """Create the folders of `db` that are missing; return those created, deepest first."""
    folder = db.parent
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(missing)
        raise GanDistError(_cannot_create(db, exc)) from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__


UI_VIEW = "gan-dist"  # the experiment's shared view of its runs in the MLflow UI
# columns of the run list: hole metrics first (what a repair is judged by), then losses
UI_COLUMNS = (
    "val/hole_psnr", "val/hole_ssim", "val/hole_swd", "val/psnr", "val/ssim",
    "train/g_rec", "train/d_loss", "images_per_s",
)  # fmt: skip


def experiment_tags() -> dict[str, str]:
    """What makes the MLflow UI (3.x) show a gan-dist experiment as training runs: its kind,
    and a shared view (`ui_path`) whose run list shows the metric columns above."""
    import json

    view = {
        "selectedColumns": [f"metrics.`{key}`" for key in UI_COLUMNS],
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
    return {
        "mlflow.experimentKind": "custom_model_development",
        f"mlflow.sharedViewState.{UI_VIEW}": json.dumps(view),
    }


def ui_path(experiment: str) -> str:
    """The UI page of an experiment's training runs, with gan-dist's columns, relative to
    the UI's address (`http://127.0.0.1:5000/` + this). The UI opens on its GenAI pages
    unless a link asks for model training."""
    return (
        f"#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey={UI_VIEW}"
    )


def run_path(experiment: str, run_id: str) -> str:
    """The UI page of one run (its Overview, which shows the newest repair grid), in the
    model-training view, relative to the UI's address."""
    return f"#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"


def where_to_look(uri: str, path: str) -> str:
    """How a person opens UI page `path` of tracking store `uri`: the server's own address,
    or the command that serves a local store's UI and the address it will have."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{path}"
    return f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{path}"


def experiment_id(client, name: str) -> str:
    """The experiment's id, created if needed, with `experiment_tags` (added to an older
    experiment that lacks them). In an embedded sqlite store its artifacts go beside the
    database file, not into whatever directory the first run started in.

    Jobs starting together race to create a new experiment: the losers get
    RESOURCE_ALREADY_EXISTS and take the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        db = sqlite_path(client.tracking_uri)
        location = (db.resolve().parent / "mlruns").as_uri() if db is not None else None
        try:
            return client.create_experiment(
                name, artifact_location=location, tags=experiment_tags()
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = client.get_experiment_by_name(name)
        if found is None:  # created and deleted in between: nothing sensible to log into
            raise GanDistError(f"MLflow experiment {name!r} vanished while it was being created")
    for key, value in experiment_tags().items():
        if key not in found.tags:  # a user's own choice of view is left alone
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def run_exists(client, run_id: str) -> bool:
    """False when the store says it has no such run; an unreachable store raises."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if _refused(exc):
            return False
        raise
    return True


def _refused(exc: Exception) -> bool:
    """A 4xx answer (bad value, unknown run) as opposed to an unreachable or failing store,
    or a race lost to another writer (see RACE_ERRORS), which sending again gets through."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or not 400 <= exc.get_http_status_code() < 500:
        return False
    text = str(exc).lower()
    return not any(race in text for race in RACE_ERRORS)


def _versions() -> dict[str, str]:
    import torch

    from gan_dist import __version__

    out = {"version.gan_dist": __version__, "version.torch": torch.__version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out
