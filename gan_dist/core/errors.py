"""Errors a user can act on: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class GanDistError(Exception):
    """A problem with the user's input or environment, worded for the user."""

    exit_code = 1


class RecipeError(GanDistError):
    """One or more recipe problems, each already formatted as `dotted.path: message`."""

    exit_code = 2

    def __init__(
        self, problems: list[str], source: str | None = None, heading: str | None = None
    ) -> None:
        self.problems = problems
        self.source = source
        # what the CLI prints above the problems, when not "SOURCE is not a valid recipe:"
        self.heading = heading
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(problems))
