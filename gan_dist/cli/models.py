"""`gan-dist models`: register a run's generator, list versions, promote one to an alias."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import out, user_errors

app = typer.Typer(help="The MLflow model registry: register, list, promote.", no_args_is_help=True)

URI_HELP = "MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."
# list and promote only read a store: one that does not exist is an error, never created
READ_URI_HELP = URI_HELP + " Must exist: never created here."


@app.command("register")
def register(
    source: Path = typer.Argument(..., help="A run directory (newest checkpoint) or checkpoint."),
    name: str = typer.Option(..., "--name", help="Registered model name."),
    alias: str = typer.Option(None, help="Also point this alias (e.g. champion) at it."),
    tracking_uri: str = typer.Option(None, help=URI_HELP),
) -> None:
    """Register the EMA generator of a checkpoint as a new model version."""
    from gan_dist.repair.publish import promote
    from gan_dist.repair.publish import register as do_register
    from gan_dist.tracking.stores import quiet_mlflow
    from gan_dist.tracking.stores import tracking_uri as default_uri

    quiet_mlflow()
    uri = tracking_uri or default_uri()
    with user_errors():
        reg = do_register(source, name, uri)
        if alias:
            promote(name, reg.version, alias, uri)
    out.print(f"registered [bold]{reg.uri}[/] (run {reg.run_id})")
    if alias:
        out.print(f"alias: models:/{name}@{alias}")


@app.command("list")
def list_(
    name: str = typer.Argument(None, help="One model; default: every registered model."),
    tracking_uri: str = typer.Option(None, help=READ_URI_HELP),
    json_: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Versions with their aliases and validation metrics, newest first."""
    import json

    from rich.table import Table

    from gan_dist.repair.publish import list_versions
    from gan_dist.tracking.stores import quiet_mlflow
    from gan_dist.tracking.stores import tracking_uri as default_uri

    quiet_mlflow()
    with user_errors():
        rows = list_versions(name, tracking_uri or default_uri())
    if json_:
        out.print_json(json.dumps(rows))
        return
    metric_keys = sorted({k for row in rows for k in row["metrics"]})
    table = Table("model", "version", "aliases", "step", *metric_keys, "run")
    if not rows:
        out.print("no registered models")
        return
    for row in rows:
        table.add_row(
            row["name"],
            row["version"],
            ", ".join(row["aliases"]),
            str(row["step"] or ""),
            *(str(row["metrics"].get(k, "")) for k in metric_keys),
            str(row["run_id"] or ""),
        )
    out.print(table)


@app.command("promote")
def promote(
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    alias: str = typer.Option(..., "--alias", help="e.g. champion; moves if it exists."),
    tracking_uri: str = typer.Option(None, help=READ_URI_HELP),
) -> None:
    """Point an alias at a version: `gan-dist repair --model models:/NAME@ALIAS` follows it."""
    from gan_dist.repair.publish import promote as do_promote
    from gan_dist.tracking.stores import quiet_mlflow
    from gan_dist.tracking.stores import tracking_uri as default_uri

    quiet_mlflow()
    with user_errors():
        do_promote(name, version, alias, tracking_uri or default_uri())
    out.print(f"models:/{name}@{alias} -> version {version}")
