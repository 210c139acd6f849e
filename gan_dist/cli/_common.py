"""What every command shares: one stderr console and turning user errors into exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

# Outside a terminal (a SLURM log, a pipe) rich would fit tables to 80 columns by cutting
# cells short (`/data/big/broke…`); a log must name every file whole, so no width limit there.
UNLIMITED = 100_000


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNLIMITED
    return console


err = _console(stderr=True)
out = _console(stderr=False)

SET_HELP = "Override a recipe value, e.g. --set data.batch_size=8 (repeatable)."


@contextmanager
def user_errors() -> Iterator[None]:
    """A GanDistError is the user's to fix: print its message, no traceback, exit non-zero."""
    from gan_dist.core.errors import GanDistError, RecipeError

    try:
        yield
    except RecipeError as exc:
        if exc.heading or exc.source:
            heading = exc.heading or f"{exc.source} is not a valid recipe:"
            err.print("[red]error:[/] ", end="")
            err.print(heading, markup=False)
        for problem in exc.problems:
            err.print("  " if exc.source else "[red]error:[/] ", end="")
            err.print(problem, markup=False)
        raise typer.Exit(exc.exit_code) from None
    except GanDistError as exc:
        err.print("[red]error:[/] ", end="")
        err.print(str(exc), markup=False)
        raise typer.Exit(exc.exit_code) from None


def announce_shell(recipe) -> None:
    """Say out loud every shell command a recipe will run (data.allow_shell)."""
    for command in recipe.data.shell_commands():
        err.print("[yellow]note:[/] this recipe runs the shell command ", end="")
        err.print(f"{command!r} on every rank (data.allow_shell: true)", markup=False)


def resolve_device(choice: str) -> str:
    """--device: `auto` is CUDA when one is visible, else the CPU; raises GanDistError for
    `cuda` without one."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        from gan_dist.core.errors import GanDistError

        raise GanDistError("--device cuda: no CUDA device visible; use --device cpu")
    return choice
