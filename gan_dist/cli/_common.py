"""What every command shares: one stderr console and turning user errors into exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

SET_HELP = "Override a recipe value, e.g. --set data.batch_size=8 (repeatable)."


@contextmanager
def user_errors() -> Iterator[None]:
    """A GanDistError is the user's to fix: print its message, no traceback, exit non-zero."""
    from gan_dist.errors import GanDistError, RecipeError

    try:
        yield
    except RecipeError as exc:
        if exc.source:
            err.print(f"[red]error:[/] {exc.source} is not a valid recipe:")
        for problem in exc.problems:
            err.print("  " if exc.source else "[red]error:[/] ", end="")
            err.print(problem, markup=False)
        raise typer.Exit(exc.exit_code) from None
    except GanDistError as exc:
        err.print("[red]error:[/] ", end="")
        err.print(str(exc), markup=False)
        raise typer.Exit(exc.exit_code) from None
