"""Publishing repair models to the MLflow model registry: register a run's checkpoint as a
version (once per weights), promote an alias to the best version, list what is registered.
Each version is an MLflow pyfunc model (`pyfunc.py`) whose artifacts are the model's two
files (`model_file.py`)."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_dist.core.errors import GanDistError
from gan_dist.repair.model_file import (
    ARTIFACT_NAME,
    SPEC,
    WEIGHTS,
    checkpoint_of,
    export_checkpoint,
    file_sha256,
    saved_recipe,
)
from gan_dist.repair.registered import quote

log = logging.getLogger("gan_dist.repair.publish")

if TYPE_CHECKING:
    from gan_dist.config.recipe import Recipe


@dataclass
class Registered:
    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register(source: Path, name: str, tracking_uri: str) -> Registered:
    """Log a checkpoint's EMA generator into its MLflow run (a new run if the checkpoint
    has none) and register it as a new version of `name`, with its validation metrics as
    version tags. A checkpoint already registered as a version of `name` is that version:
    registering it again makes no second one."""
    import mlflow

    from gan_dist.run import checkpoint
    from gan_dist.tracking.experiments import experiment_id, run_exists
    from gan_dist.tracking.stores import open_store

    ckpt_path = checkpoint_of(source).resolve()
    ckpt = checkpoint.read(ckpt_path)
    recipe = saved_recipe(ckpt)
    client = open_store(tracking_uri)
    weights = file_sha256(ckpt.path / "ema.safetensors")
    known = _version_with_weights(client, name, weights)
    if known is not None:
        log.warning("%s is already version %s of %s", ckpt_path, known.version, name)
        return Registered(name, str(known.version), known.run_id)
    mlflow.set_tracking_uri(tracking_uri)
    run_id = ckpt.state.get("tracking_run_id")
    if run_id is not None and not run_exists(client, run_id):
        log.warning("run %s of %s is not in %s; logging to a new run", run_id, source, tracking_uri)
        run_id = None
    if run_id is None:
        mlflow.set_experiment(
            experiment_id=experiment_id(client, recipe.tracking.experiment or recipe.name)
        )
    previous = client.get_run(run_id).info.status if run_id else None
    with tempfile.TemporaryDirectory(prefix="gan-dist-register-") as tmp:
        spec = export_checkpoint(ckpt_path, Path(tmp))
        with mlflow.start_run(run_id=run_id) as run:
            info = mlflow.pyfunc.log_model(name=ARTIFACT_NAME, **pyfunc_arguments(Path(tmp)))
            run_id = run.info.run_id
    if previous and previous != "FINISHED":
        client.set_terminated(run_id, previous)  # registering does not end a running job
    # the weights tag is made with the version, so a crowd registering the same weights
    # sees every earlier one: all but the first remove their own and report the first
    created = mlflow.register_model(info.model_uri, name, tags={"weights_sha256": weights})
    version = str(created.version)
    first = _version_with_weights(client, name, weights)
    if first is not None and str(first.version) != version:
        client.delete_model_version(name, version)
        log.warning("%s is already version %s of %s", ckpt_path, first.version, name)
        return Registered(name, str(first.version), first.run_id)
    tags = {f"val.{k}": f"{v:.6g}" for k, v in spec["metrics"].items()}
    tags |= {"step": str(ckpt.step), "recipe": recipe.name, "checkpoint": str(ckpt_path)}
    tags |= ckpt.state.get("lineage", {})  # init and parent: what it was fine-tuned from
    for kind, entry in spec["families"].items():
        package = f" ({entry['package']} {entry['version']})" if entry["package"] else ""
        tags[kind] = f"{entry['name']}{package}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return Registered(name, version, run_id)


def _version_with_weights(client, name: str, weights: str):
    """The oldest version of `name` whose weights_sha256 tag is `weights`, or None: the
    same weights, not the same path, since a run dir deleted and trained again reuses it."""
    same = [
        v
        for v in client.search_model_versions(f"name='{quote(name)}'")
        if v.tags.get("weights_sha256") == weights
    ]
    return min(same, key=lambda v: int(v.version), default=None)


def pyfunc_arguments(folder: Path) -> dict[str, Any]:
    """What `mlflow.pyfunc.log_model` (or `save_model`) is given for the repair model in
    `folder` (its spec.json and weights.safetensors): the wrapper's code as a model from
    code, the two files as artifacts, the pinned requirements, the signature and a sample
    request."""

    spec = json.loads((folder / SPEC).read_text())
    return {
        "python_model": str(Path(__file__).with_name("pyfunc.py")),
        "artifacts": {"spec": str(folder / SPEC), "weights": str(folder / WEIGHTS)},
        "pip_requirements": _requirements(spec),
        "signature": signature(),
        "input_example": _input_example(),
    }


def signature():
    """The served model's MLflow signature (see `pyfunc.py`): rows of image and mask
    file bytes in; the repaired file's bytes, its suffix, status and detail out; the tiling
    of `gan-dist repair` as params with its defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from gan_dist.repair.files import BATCH, OVERLAP, TILE

    inputs = Schema([ColSpec("binary", "image"), ColSpec("binary", "mask", required=False)])
    outputs = Schema(
        [ColSpec("binary", "image")]
        + [ColSpec("string", c) for c in ("format", "status", "detail")]
    )
    params = ParamSchema(
        [
            ParamSpec("format", "string", "same"),
            ParamSpec("tile", "long", TILE),
            ParamSpec("overlap", "long", OVERLAP),
            ParamSpec("batch", "long", BATCH),
        ]
    )
    return ModelSignature(inputs, outputs, params)


def _input_example():
    """A request MLflow stores with the model (and shows as its sample request): a 32 px
    8-bit grey image with a square hole in its mask, as PNG bytes."""
    import numpy as np
    import pandas as pd

    from gan_dist.data.images import encode_png

    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8)[:, :, None] * 4
    hole = np.zeros_like(ramp)
    hole[8:24, 8:24] = 255
    return pd.DataFrame({"image": [encode_png(ramp)], "mask": [encode_png(hole)]})


def register_completed(run: Recipe, checkpoint_path: Path) -> Registered | None:
    """A completed run's `tracking.register_as`, registered by the command that trained it
    (`gan-dist train`, the demo): None when the recipe registers nothing or does not track.
    Training is done and its checkpoint safe, so a registry failure is a warning with the
    command to retry, never an error."""
    from gan_dist.tracking.stores import tracking_uri

    name = run.tracking.register_as
    if not (name and run.tracking.enabled):
        return None
    try:
        return register(checkpoint_path, name, tracking_uri(run))
    except Exception as exc:  # the store's failure must not turn a finished run into an error
        log.warning(
            "could not register %s as %s (%s); retry with: gan-dist models register %s --name %s",
            checkpoint_path,
            name,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            checkpoint_path,
            name,
        )
        return None


def _requirements(spec: dict[str, Any]) -> list[str]:
    """gan-dist and every installed package that provided one of the model's families, at
    the versions it was trained with (what `mlflow models serve` installs)."""
    from gan_dist import __version__

    pins = {"gan-dist": __version__}
    for entry in spec["families"].values():
        if entry["package"] and entry["version"]:
            pins.setdefault(entry["package"], entry["version"])
    return [f"{package}=={version}" for package, version in pins.items()]


PROMOTE_BY = "val.hole_psnr"  # the version tag an alias follows (higher is better)


def promote_if_as_good(name: str, version: str, alias: str, tracking_uri: str) -> str:
    """Moves `alias` to `version` unless the version it points at scored better on
    PROMOTE_BY, or has that score while `version` has none (trained without validation: it
    cannot be shown as good); a version without the score never blocks one with it.
    Returns what happened, in a sentence."""
    from mlflow.exceptions import MlflowException

    from gan_dist.tracking.stores import open_store

    client = open_store(tracking_uri, create=False)
    new = _score(client.get_model_version(name, version).tags)
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no version has the alias yet
        current = None
    if current is not None and str(current.version) != str(version):
        old = _score(current.tags)
        if old is not None and (new is None or new < old):
            said = (
                f"scored {new:.4g}" if new is not None else f"has no {PROMOTE_BY} (no validation)"
            )
            return (
                f"kept @{alias} on version {current.version} ({PROMOTE_BY} {old:.4g}): "
                f"version {version} {said}"
            )
    promote(name, version, alias, tracking_uri)
    score = f" ({PROMOTE_BY} {new:.4g})" if new is not None else ""
    return f"moved @{alias} to version {version}{score}"


def _score(tags: dict[str, str]) -> float | None:
    try:
        return float(tags[PROMOTE_BY])
    except (KeyError, ValueError):
        return None


def promote(name: str, version: str, alias: str, tracking_uri: str) -> None:
    """Point an alias at an existing version; a store that does not exist is not created."""
    from mlflow.exceptions import MlflowException

    from gan_dist.tracking.stores import open_store

    client = open_store(tracking_uri, create=False)
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise GanDistError(f"models:/{name}/{version}: {exc.message}") from None


def list_versions(name: str | None, tracking_uri: str) -> list[dict[str, Any]]:
    """One row per version (newest first), of one model or of all. A store that does not
    exist is not created: listing it would show nothing and leave an empty one behind."""
    from gan_dist.tracking.stores import open_store

    client = open_store(tracking_uri, create=False)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        found = client.search_model_versions(f"name='{quote(model_name)}'")
        if name and not found:
            raise GanDistError(f"no registered model named {name!r} in {tracking_uri}")
        aliases = client.get_registered_model(model_name).aliases  # search omits them
        for mv in sorted(found, key=lambda v: -int(v.version)):
            rows.append(
                {
                    "name": mv.name,
                    "version": str(mv.version),
                    "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    "metrics": {k[4:]: v for k, v in mv.tags.items() if k.startswith("val.")},
                    "step": mv.tags.get("step"),
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                }
            )
    return rows
