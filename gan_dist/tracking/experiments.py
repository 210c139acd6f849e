"""The experiment a run is filed under, made ready for the MLflow UI (a shared view whose
columns lead with the hole metrics), and the UI's addresses of experiments and runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gan_dist.core.errors import GanDistError
from gan_dist.tracking.stores import refused, sqlite_path

if TYPE_CHECKING:
    pass


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
        if refused(exc):
            return False
        raise
    return True
