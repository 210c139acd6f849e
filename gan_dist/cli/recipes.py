"""`gan-dist recipes`: list, show and validate recipes."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import SET_HELP, announce_shell, err, out, user_errors

app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)


@app.command("list")
def list_recipes() -> None:
    """The built-in recipes, each with a one-line description."""
    from rich.table import Table

    from gan_dist.config.recipe import builtin_recipes, load_recipe

    table = Table("recipe", "description", box=None, pad_edge=False)
    with user_errors():
        for name, path in builtin_recipes().items():
            table.add_row(name, load_recipe(path).description)
    out.print(table)


@app.command("show")
def show(
    recipe: str = typer.Argument(..., help="A built-in recipe name or a YAML file."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Print the fully resolved recipe: every default filled in, overrides applied."""
    from gan_dist.config.recipe import load_recipe, recipe_to_yaml

    with user_errors():
        text = recipe_to_yaml(load_recipe(recipe, set_))
    typer.echo(text, nl=False)


@app.command("validate")
def validate(
    recipe: Path = typer.Argument(..., help="The recipe YAML file (or a built-in name)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Exit 0 if the recipe is valid; otherwise print every problem as `path: message` and
    exit 2."""
    from gan_dist.config.recipe import load_recipe

    with user_errors():
        loaded = load_recipe(str(recipe), set_)
    err.print(f"[green]ok:[/] {recipe} (recipe {loaded.name!r})")
    announce_shell(loaded)
