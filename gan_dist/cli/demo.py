"""`gan-dist demo`: the main job on a fresh machine, with no arguments and no network."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import out, user_errors


def demo(
    workdir: Path = typer.Option(Path("gan-dist-demo"), help="Where the demo writes."),
) -> None:
    """Pack the bundled sample photos into inpainting shards and draw a sample grid.

    Training, registration and repair join this command as those stages land.
    """
    from gan_dist.demo import run_demo

    with user_errors():
        result = run_demo(workdir, log=out.print)
    out.print(f"[green]demo done[/]: shards in {result.shards}, grid {result.grid}")
