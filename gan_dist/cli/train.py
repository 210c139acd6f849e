"""`gan-dist train`: the entry point every rank runs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gan_dist.cli._common import SET_HELP, err, out, user_errors

if TYPE_CHECKING:
    from gan_dist.config.recipe import Recipe
    from gan_dist.train.trainer import Outcome


def train(
    recipe: str = typer.Argument(..., help="A recipe YAML file or a built-in recipe name."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    run_dir: Path = typer.Option(
        None, help="Checkpoints and the resolved recipe go here. Default: runs/RECIPE_NAME."
    ),
    resume: str = typer.Option(
        "auto",
        help="auto: continue from the newest usable checkpoint "
        "in the run dir, if any; none: start fresh; or a checkpoint "
        "path.",
    ),
    resume_changed: bool = typer.Option(
        False,
        "--resume-changed",
        help="Resume even though the recipe changes what the run is (its data, nets, "
        "objective, seed), which is refused otherwise; the changes are recorded.",
    ),
) -> None:
    """Train a recipe on this process; every rank runs it (`gan-dist launch` starts one per
    device, locally or on SLURM). SIGTERM, SIGUSR1 and Ctrl-C write a checkpoint and exit
    75; run the same command to resume."""
    # First of all, before the heavy imports: a stop signal during start-up is honoured too.
    from gan_dist.run.signals import EXIT_PREEMPTED, StopFlag, StopRequested

    with StopFlag() as stop:
        try:
            loaded, outcome = _run(recipe, set_, run_dir, resume, stop, resume_changed)
        except StopRequested as exc:
            err.print(f"[yellow]stopped[/] ({exc}) before training started; nothing to save")
            if run_dir is not None and os.environ.get("RANK", "0") == "0":
                from gan_dist.run.status import write_if_free

                with contextlib.suppress(OSError):  # a requeueing script reads it
                    write_if_free(run_dir, "preempted", 0, None)
            raise typer.Exit(EXIT_PREEMPTED) from None
    if outcome.status == "preempted":
        raise typer.Exit(EXIT_PREEMPTED)
    if outcome.main_process:
        said = "already complete" if outcome.already_complete else "[green]done[/]"
        err.print(f"{said}: step {outcome.step}, checkpoint {outcome.checkpoint}")
        _register(loaded, outcome.checkpoint, outcome.already_complete)
        _where_to_look(loaded, outcome)


def _where_to_look(loaded: Recipe, outcome: Outcome) -> None:
    """The run in the MLflow UI and the newest repair grid on disk (rank 0)."""
    from gan_dist.tracking.experiments import run_path, where_to_look
    from gan_dist.tracking.stores import tracking_uri

    if outcome.run_id and outcome.experiment_id:
        page = run_path(outcome.experiment_id, outcome.run_id)
        out.print(f"MLflow run {outcome.run_id}: {where_to_look(tracking_uri(loaded), page)}")
    if outcome.grid is not None:
        out.print(f"repair grid (damaged | repaired | original): {outcome.grid}")


def _register(loaded: Recipe, checkpoint: Path | None, earlier: bool = False) -> None:
    """The finished run's model, as `tracking.register_as` asks (rank 0 only); `earlier`:
    the checkpoint was written by an earlier command, which is said."""
    from gan_dist.repair.publish import promote_if_as_good, register_completed
    from gan_dist.tracking.stores import tracking_uri

    if checkpoint is None:
        return
    registered = register_completed(loaded, checkpoint)
    if registered is None:
        return
    what = f"; the checkpoint an earlier command wrote: {checkpoint}" if earlier else ""
    out.print(
        f"registered {registered.uri} ({registered.name}, version {registered.version}{what})"
    )
    if loaded.tracking.promote:
        alias, uri = loaded.tracking.promote, tracking_uri(loaded)
        out.print(promote_if_as_good(registered.name, registered.version, alias, uri))


def _run(
    recipe: str, set_: list[str], run_dir: Path | None, resume: str, stop, resume_changed: bool
) -> tuple[Recipe, Outcome]:
    import logging

    from gan_dist.config.recipe import load_recipe
    from gan_dist.train.trainer import train as run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        loaded = load_recipe(recipe, set_)
        initial = None
        if loaded.model.init:  # resolved only if there is no checkpoint to resume
            from functools import partial

            from gan_dist.repair.model_file import initial_weights
            from gan_dist.tracking.stores import tracking_uri

            initial = partial(initial_weights, loaded.model.init, tracking_uri(loaded))
        directory = run_dir or Path("runs") / loaded.name
        return loaded, run(loaded, directory, resume, stop, initial, resume_changed)
