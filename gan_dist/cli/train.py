"""`gan-dist train`: the entry point every rank runs."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import SET_HELP, err, user_errors


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
) -> None:
    """Train a recipe on this process (run one per device: see `accelerate launch` in the
    README). Exits 75 when preempted (SIGTERM/SIGUSR1) after writing a checkpoint."""
    import logging

    from gan_dist.recipe import load_recipe
    from gan_dist.train.signals import EXIT_PREEMPTED
    from gan_dist.train.trainer import train as run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        loaded = load_recipe(recipe, set_)
        outcome = run(loaded, run_dir or Path("runs") / loaded.name, resume)
    if outcome.status == "preempted":
        raise typer.Exit(EXIT_PREEMPTED)
    if outcome.main_process:
        err.print(f"[green]done[/]: step {outcome.step}, checkpoint {outcome.checkpoint}")
