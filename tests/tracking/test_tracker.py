"""The tracker in this process, on an embedded store: what it sends and how."""

from __future__ import annotations

import threading
from pathlib import Path

from gan_dist.config.recipe import load_recipe
from gan_dist.tracking.tracker import MAX_BATCH, Dropped, Tracker


def test_metrics_kept_while_the_store_is_away_go_in_few_requests(tmp_path: Path, monkeypatch):
    """After an outage, the steps logged meanwhile must reach the store within the flush
    timeout: one request a step took longer than that on a loaded machine (the outage test
    lost its last steps), so the backlog goes in batches of up to MLflow's 1000 metrics."""
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe("quickstart", [f"tracking.uri={uri}"])
    tracker = Tracker(recipe, tmp_path / "run", None, enabled=True)
    assert tracker.wait_for_run_id(60)
    sizes = []  # metrics per request (the run's start sends params and tags the same way)
    client = tracker._mlflow()
    send = client.log_batch

    def counted(*args, **kw):
        sizes.append(len(kw.get("metrics") or []))
        return send(*args, **kw)

    monkeypatch.setattr(client, "log_batch", counted)
    away = threading.Event()
    tracker._submit("other", away.wait, "the store away")  # holds everything behind it
    steps, per_step = 300, 8
    for step in range(1, steps + 1):
        tracker.log_metrics({f"train/m{i}": step + i for i in range(per_step)}, step)
    away.set()
    assert not tracker.close("FINISHED", 60)
    assert [n for n in sizes if n] == [MAX_BATCH, MAX_BATCH, steps * per_step - 2 * MAX_BATCH]
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "train/m3")
    assert [(m.step, m.value) for m in history] == [(s, s + 3) for s in range(1, steps + 1)]


def test_a_request_that_timed_out_but_landed_is_not_counted_lost(tmp_path, monkeypatch, caplog):
    """A server frozen past the request timeout stores the request once it runs again; the
    re-send, which had taken newer steps into it, was refused as a duplicate and all of it
    written off, though only the newer steps were missing (hostile pass, a real server under
    SIGSTOP). A re-send is now the same request, and a duplicate of it is delivered."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(load_recipe("quickstart", [f"tracking.uri={uri}"]), tmp_path, None, True)
    assert tracker.wait_for_run_id(60)
    client = tracker._mlflow()
    send, calls, frozen = client.log_batch, [], threading.Event()

    def slow_server(run_id, metrics=(), **kw):
        if not metrics:  # the run's start: its params and tags
            return send(run_id, metrics=metrics, **kw)
        calls.append(sorted({m.step for m in metrics}))
        if len(calls) == 1:  # stored, but the answer comes after the client gave up
            send(run_id, metrics=metrics, **kw)
            frozen.wait(10)
            raise ConnectionError("Read timed out. (read timeout=10)")
        if len(calls) == 2:  # the server's answer to rows it holds
            raise MlflowException(
                "UNIQUE constraint failed: metrics.key, metrics.timestamp, metrics.step",
                BAD_REQUEST,
            )
        return send(run_id, metrics=metrics, **kw)

    monkeypatch.setattr(client, "log_batch", slow_server)
    tracker.log_metrics({"train/g_rec": 1.0}, 1)
    while not calls:
        threading.Event().wait(0.01)
    for step in (2, 3):  # queued behind the request in flight
        tracker.log_metrics({"train/g_rec": float(step)}, step)
    frozen.set()
    assert not tracker.close("FINISHED", 60)
    assert calls[:2] == [[1], [1]]  # the re-send is the request that timed out, unchanged
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "train/g_rec")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_what_was_not_sent_is_counted_in_the_words_a_user_reads():
    assert str(Dropped(metrics=1, steps={5})) == "1 set of metrics (step 5)"
    many = Dropped(metrics=7, images=1, steps={1, 3, 5, 7, 9, 10, 11})
    assert str(many) == (
        "7 sets of metrics (steps 1, 3, 5, 7 and 1 span more, up to step 11), 1 sample grid"
    )


def test_a_run_the_store_never_heard_end_is_said_to_stay_running(tmp_path, monkeypatch, caplog):
    """A server gone before the end: MLflow shows the run RUNNING for ever, which the
    end-of-run warning did not say (hostile pass); it now says so, and how to end it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe("quickstart", [f"tracking.uri={uri}"])
    tracker = Tracker(recipe, tmp_path / "run", None, enabled=True)
    assert tracker.wait_for_run_id(60)
    gone, in_flight = threading.Event(), threading.Event()

    def request_in_flight():  # times out only after the close has given up on it
        in_flight.set()
        gone.wait()
        raise ConnectionError("Read timed out. (read timeout=10)")

    tracker._submit("other", request_in_flight, "the store away")  # never back in time
    assert in_flight.wait(60)
    for step in (1, 2, 3, 7):
        tracker.log_metrics({"train/g_rec": 1.0}, step)
    dropped = tracker.close("KILLED", 0.5)
    gone.set()
    tracker._thread.join(10)
    # nothing after the end-of-run count: an outage line then said it kept and retried what
    # was already counted lost (hostile pass)
    assert "did not receive" in caplog.records[-1].getMessage(), caplog.records[-1].getMessage()
    assert dropped.metrics == 4 and "run status" in dropped.other
    (said,) = [r.getMessage() for r in caplog.records if "did not receive" in r.getMessage()]
    # which steps the curves miss, not only how many (hostile pass)
    assert "4 sets of metrics (steps 1-3, 7)" in said, said
    assert f"shows run {tracker.run_id} as RUNNING" in said
    assert f"MlflowClient('{uri}').set_terminated('{tracker.run_id}', 'KILLED')" in said
