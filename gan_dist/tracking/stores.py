"""Where runs are kept: the tracking URI a recipe or the environment names, and `open_store`,
through which every use of a store goes.

For an embedded sqlite store it makes several jobs starting at once on one `mlflow.db` (a
sweep, a SLURM array) safe: MLflow creates and migrates a fresh database in place with no
lock between processes, and two processes doing so at once leave it half-migrated for good.
Here a new store is built in a temporary file and linked into place only when complete,
under an OS file lock beside the database, and read-only commands never create one."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from gan_dist.core.errors import GanDistError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from gan_dist.config.recipe import Recipe


DEFAULT_URI = "sqlite:///mlflow.db"


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
            f"tracking URI {uri}: {first_line(exc)}; use sqlite:///PATH/mlflow.db or an "
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
                f"the MLflow tracking store {db} cannot be opened ({first_line(exc)})"
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
        f"could not create the MLflow tracking store {db} ({first_line(exc)}); "
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__


# What a store answers to rows it already holds (sqlite, PostgreSQL, MySQL): a request that
# timed out on our side may have landed all the same.
DUPLICATE_ERRORS = ("unique constraint failed", "duplicate key value", "duplicate entry")


def already_stored(exc: Exception) -> bool:
    """The store refused rows it already holds: a re-sent request that had landed before."""
    text = str(exc).lower()
    return refused(exc) and any(duplicate in text for duplicate in DUPLICATE_ERRORS)


def refused(exc: Exception) -> bool:
    """A 4xx answer (bad value, unknown run) as opposed to an unreachable or failing store,
    or a race lost to another writer (see RACE_ERRORS), which sending again gets through."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or not 400 <= exc.get_http_status_code() < 500:
        return False
    text = str(exc).lower()
    return not any(race in text for race in RACE_ERRORS)


_opened: set[str] = set()  # sqlite URIs whose store this process has opened under the lock


_opened_lock = threading.Lock()
