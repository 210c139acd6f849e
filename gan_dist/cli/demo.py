"""`gan-dist demo`: the main job on a fresh machine, with no arguments and no network."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import out, user_errors


def demo(
    workdir: Path = typer.Option(Path("gan-dist-demo"), help="Where the demo writes."),
    minutes: float = typer.Option(2.0, min=0.1, help="Training time budget."),
) -> None:
    """The whole product in one command, offline: pack scikit-image's sample photos, train
    the quickstart recipe, register and promote the model in MLflow, repair held-out
    photos with it and draw a before/after grid."""
    from gan_dist.cli.demo_flow import run_demo
    from gan_dist.tracking.experiments import ui_path

    with user_errors():
        result = run_demo(workdir, minutes, log=out.print)
    store = result.tracking_uri
    out.print("[green]demo done[/]")
    out.print(f"  model:  [bold]{result.model_uri}[/]")
    out.print(f"  grid:   {result.grid}")
    out.print(
        f"  repair your images: gan-dist repair IN OUT --model {result.model_uri} --mask MASKS"
    )
    out.print(f"  look at the run:    mlflow ui --backend-store-uri {store}")
    out.print(f"    then open http://127.0.0.1:5000/{ui_path(result.experiment)}")
