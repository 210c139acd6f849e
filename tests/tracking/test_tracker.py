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


def test_what_was_not_sent_is_counted_in_the_words_a_user_reads():
    assert str(Dropped(metrics=1, steps={5})) == "1 set of metrics (step 5)"
    many = Dropped(metrics=7, images=1, steps={1, 3, 5, 7, 9, 10, 11})
    assert str(many) == "7 sets of metrics (steps 1, 3, 5, 7, 1 span more), 1 sample grid"


def test_a_run_the_store_never_heard_end_is_said_to_stay_running(tmp_path, monkeypatch, caplog):
    """A server gone before the end: MLflow shows the run RUNNING for ever, which the
    end-of-run warning did not say (hostile pass); it now says so, and how to end it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe("quickstart", [f"tracking.uri={uri}"])
    tracker = Tracker(recipe, tmp_path / "run", None, enabled=True)
    assert tracker.wait_for_run_id(60)
    gone = threading.Event()
    tracker._submit("other", gone.wait, "the store away")  # never back before the close
    for step in (1, 2, 3, 7):
        tracker.log_metrics({"train/g_rec": 1.0}, step)
    dropped = tracker.close("KILLED", 0.5)
    gone.set()
    assert dropped.metrics == 4 and "run status" in dropped.other
    (said,) = [r.getMessage() for r in caplog.records if "did not receive" in r.getMessage()]
    # which steps the curves miss, not only how many (hostile pass)
    assert "4 sets of metrics (steps 1-3, 7)" in said, said
    assert f"shows run {tracker.run_id} as RUNNING" in said
    assert f"MlflowClient('{uri}').set_terminated('{tracker.run_id}', 'KILLED')" in said
