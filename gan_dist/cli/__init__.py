"""The `gan-dist` command. Only typer/rich load at start-up; each command imports what it
needs when it runs, so `gan-dist --help` stays fast."""

from __future__ import annotations

import typer

from gan_dist import __version__
from gan_dist.cli import data, demo, eval, launch, models, recipes, repair, train

app = typer.Typer(
    name="gan-dist",
    help="Train GANs that repair damaged images, on one laptop or many GPU nodes.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipes.app, name="recipes")
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.command("train")(train.train)
app.command("launch")(launch.launch)
app.command("repair")(repair.repair)
app.command("eval")(eval.eval_)
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gan-dist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train GANs that repair damaged images, on one laptop or many GPU nodes."""


def main() -> None:
    app()
