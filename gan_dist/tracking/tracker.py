"""MLflow tracking from rank 0, off the training thread, never fatal.

Every call only queues work; one background thread talks to MLflow. When the store is
unreachable (server down, network timeout) the thread keeps the unsent work and retries with
back-off, so metrics logged during an outage arrive once the server is back; training never
waits on it. At the end, `close` waits a bounded time and reports what could not be sent.

Other ranks get a `Tracker` with `enabled=False`, whose calls do nothing: every rank that
starts an MLflow run makes its own run.

Where stores are opened: `stores.py`; experiments and UI addresses: `experiments.py`.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_dist.tracking.experiments import experiment_id, run_exists
from gan_dist.tracking.stores import (
    already_stored,
    first_line,
    open_store,
    refused,
    tracking_uri,
)

if TYPE_CHECKING:
    import numpy as np

    from gan_dist.config.recipe import Recipe

log = logging.getLogger("gan_dist.tracking.tracker")

MAX_QUEUED_IMAGES = 32  # sample grids are large; metrics are small and always kept
MAX_BATCH = 1000  # metrics in one log_batch request: MLflow's own limit
BACKOFF_S = (1, 2, 5, 10, 30)
START = "run start"  # the first job of every tracker


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
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    batches: int = 1  # the trainer's log_metrics calls this job sends
    sent: bool = False  # tried once: its request may have landed, so it is re-sent unchanged


@dataclass
class Dropped:
    metrics: int = 0
    images: int = 0
    other: list[str] = field(default_factory=list)
    steps: set[int] = field(default_factory=set)  # of the metrics: where the curves have gaps

    def __bool__(self) -> bool:
        return bool(self.metrics or self.images or self.other)

    def __str__(self) -> str:
        parts = []
        if self.metrics:
            # one a log_metrics call: a logged step's losses, or a validation's scores
            where = f" ({_spans(self.steps)})" if self.steps else ""
            parts.append(f"{_count(self.metrics, 'set')} of metrics{where}")
        if self.images:
            parts.append(_count(self.images, "sample grid"))
        parts += self.other
        return ", ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _spans(steps: set[int], most: int = 4) -> str:
    """{3, 4, 5, 9} -> "steps 3-5, 9"; past `most` spans, how many more and the last step."""
    runs: list[list[int]] = []
    for step in sorted(steps):
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    shown = [f"{a}-{b}" if a != b else str(a) for a, b in runs[:most]]
    more = ""
    if len(runs) > most:
        more = f" and {_count(len(runs) - most, 'span')} more, up to step {runs[-1][1]}"
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(shown) + more


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
        # urllib3 warns at each of them ("Retrying (Retry(total=0, ...)"), a line per request
        # while a server is away; the worker says an outage once, and when it ends
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
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
        batch = [(k, float(v), stamp, step) for k, v in metrics.items()]
        job = _Job("metrics", lambda: self._send_metrics(job), f"metrics at step {step}", batch)
        self._queue.put(job)

    def _send_metrics(self, job: _Job) -> None:
        """One request for this job and the metrics queued right behind it (up to MLflow's
        limit): after an outage, the steps kept meanwhile go in a few requests, not one
        request a step, so they arrive within `flush_timeout_s` on a slow server too."""
        with self._queue.mutex:  # the queue's own lock: take only what sits at its head
            waiting = self._queue.queue
            while (
                not job.sent  # a re-send is the same request: a store that holds it says so
                and waiting
                and waiting[0] is not None
                and waiting[0].kind == "metrics"
                and len(job.metrics) + len(waiting[0].metrics) <= MAX_BATCH
            ):
                behind = waiting.popleft()
                job.metrics += behind.metrics
                job.batches += behind.batches
        if job.batches > 1:
            job.what = f"metrics at steps {job.metrics[0][3]}-{job.metrics[-1][3]}"
        from mlflow.entities import Metric

        batch = [Metric(*metric) for metric in job.metrics]
        job.sent = True
        self._mlflow().log_batch(self.run_id, metrics=batch, synchronous=True)

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
            # MLflow shows a run it never heard end as RUNNING, for ever: say so, and how
            unended = ""
            if "run status" in self.dropped.other and self.run_id is not None:
                unended = (
                    f" MLflow shows run {self.run_id} as RUNNING until it is ended; once the "
                    f'server answers: python -c "from mlflow import MlflowClient; MlflowClient('
                    f"'{self.uri}').set_terminated('{self.run_id}', '{status}')\""
                )
            log.warning(
                "MLflow (%s) did not receive: %s. Training itself was not affected.%s",
                self.uri,
                self.dropped,
                unended,
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
            resent = pending.sent
            try:
                pending.run()
            except Exception as exc:  # whatever the store does, training goes on
                if not (resent and already_stored(exc)):  # else: timed out here, landed there
                    tries = self._failed(pending, exc, tries)
                    continue
            if self._failing_since is not None:
                log.warning(
                    "MLflow at %s reachable again after %.0f s; sending what was kept",
                    self.uri,
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
            self._done(pending)

    def _failed(self, pending: _Job, exc: Exception, tries: int) -> int:
        """Drop a job the store refused, or wait to retry one it could not take; the
        number of tries so far."""
        if self._stopping:  # the close has counted it lost and said so: nothing more to say
            return tries
        if refused(exc):  # the store answered "no": sending again will not help
            log.warning("MLflow refused %s: %s", pending.what, first_line(exc))
            self._count_dropped(pending)
            if pending.what == START and self.run_id is None:
                self._start_failed = f"MLflow at {self.uri} refused: {first_line(exc)}"
            elif pending.what == START:  # the run exists; only its params were refused
                self._started = True
            self._done(pending)
            return tries
        self._last_error = f"{type(exc).__name__}: {first_line(exc)}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "MLflow at %s failed (%s); keeping unsent logs and retrying",
                self.uri,
                self._last_error,
            )
        time.sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
        return tries + 1

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
            self.dropped.metrics += job.batches
            self.dropped.steps.update(step for *_, step in job.metrics)
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
