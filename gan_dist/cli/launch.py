"""`gan-dist launch`: start a recipe on every local device, across nodes, or on SLURM."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from gan_dist.cli._common import SET_HELP, announce_shell, err, out, user_errors
from gan_dist.core.errors import GanDistError
from gan_dist.run.signals import EXIT_PREEMPTED


def launch(
    recipe: str = typer.Argument(..., help="A recipe YAML file or a built-in recipe name."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    slurm: bool = typer.Option(
        None,
        "--slurm/--local",
        help="Submit to SLURM, or run here. Default: SLURM when the recipe has launch.slurm.",
    ),
    nodes: int = typer.Option(None, min=1, help="Machines (launch.nodes)."),
    gpus_per_node: int = typer.Option(None, min=1, help="GPUs per machine (launch.gpus_per_node)."),
    cpu_procs: int = typer.Option(
        None, min=1, help="Processes per machine without GPUs (launch.cpu_procs)."
    ),
    node_rank: int = typer.Option(
        0, min=0, help="Without SLURM, across nodes: this machine's rank (start it on each)."
    ),
    main_addr: str = typer.Option("127.0.0.1", help="Without SLURM: the address of node 0."),
    main_port: int = typer.Option(None, help="Rank 0's port (launch.main_port)."),
    run_dir: Path = typer.Option(
        None, help="Checkpoints, logs and status go here. Default: runs/RECIPE_NAME."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the command or sbatch script; run nothing."
    ),
    follow: bool = typer.Option(
        False, "--follow", help="SLURM: show the job's state and log until it ends."
    ),
) -> None:
    """Train a recipe on all local devices, on several machines, or as a SLURM job.

    Exit codes: 0 completed (or submitted), 75 preempted (rerun to resume), other: failed."""
    from gan_dist.config.recipe import load_recipe

    given = {
        "launch.nodes": ("--nodes", nodes),
        "launch.gpus_per_node": ("--gpus-per-node", gpus_per_node),
        "launch.cpu_procs": ("--cpu-procs", cpu_procs),
        "launch.main_port": ("--main-port", main_port),
    }
    flags = {f"{k}={v}": f"{flag} {v}" for k, (flag, v) in given.items() if v is not None}
    started = time.time()
    with user_errors():
        loaded = load_recipe(recipe, set_, flags)
        announce_shell(loaded)
        if not dry_run:  # a dry run renders commands for data that may live elsewhere
            from gan_dist.data.stream import check_data

            check_data(loaded.data)  # before the run folder is made: a wrong path leaves none
        directory = (run_dir or Path("runs") / loaded.name).absolute()
        use_slurm = slurm if slurm is not None else loaded.launch.slurm is not None
        if use_slurm and (node_rank or main_addr != "127.0.0.1"):
            raise GanDistError(
                "--node-rank and --main-addr are for launches without SLURM: a SLURM job gives "
                "each node its rank and the address of rank 0's node; leave them out, or "
                "launch with --local"
            )
        if use_slurm:
            code = _slurm(loaded, directory, dry_run, follow)
        else:
            from gan_dist.launch.local import run_local

            code = run_local(
                loaded,
                directory,
                node_rank=node_rank,
                main_addr=main_addr,
                dry_run=dry_run,
                announce=lambda line: err.print(line, markup=False),
            )
    if code == EXIT_PREEMPTED:
        err.print("[yellow]preempted[/]: checkpoint written; run the same command to resume")
    elif code and not dry_run:
        from gan_dist.launch.local import failure_hint

        err.print(f"[red]failed[/] (exit {code}): ", end="")
        err.print(failure_hint(directory, started), markup=False)
    raise typer.Exit(code)


def _slurm(recipe, run_dir: Path, dry_run: bool, follow: bool) -> int:
    from gan_dist.launch import slurm

    if dry_run:  # the script reads the frozen recipe: write both, so it can be submitted
        import shlex

        from gan_dist.launch.local import frozen_recipe, kept_for_dry_run
        from gan_dist.run.runlock import check_free

        check_free(run_dir)
        kept = kept_for_dry_run(recipe, run_dir)
        if kept:
            out.print(slurm.render(recipe, run_dir), markup=False, highlight=False, end="")
            err.print(kept, markup=False)
        else:
            script = slurm.write_script(recipe, run_dir)
            out.print(script.read_text(), markup=False, highlight=False, end="")
            err.print(
                f"wrote {script} and the recipe it reads, {frozen_recipe(run_dir)}; "
                f"submit with: sbatch {shlex.quote(str(script))}",
                markup=False,
            )
        from gan_dist.launch.cluster_checks import cluster_checks

        err.print("check on your cluster (slurm/README.md, Cluster notes):")
        for line in cluster_checks(recipe, run_dir):
            err.print(f"  {line}", markup=False)
        return 0
    if os.environ.get("SLURM_JOB_ID"):
        err.print(f"inside SLURM job {os.environ['SLURM_JOB_ID']}: running on this allocation")
        return slurm.run_in_allocation(recipe, run_dir)
    job_id, script = slurm.submit(recipe, run_dir)
    log = run_dir / f"slurm-{job_id}.log"
    err.print(f"[green]submitted[/] job {job_id}\n  script {script}\n  log    {log}")
    out.print(job_id)
    if not follow:
        return 0
    return slurm.follow(
        job_id,
        log,
        say=lambda text: err.print(f"[bold]{text}[/]"),
        echo=lambda text: out.print(text, end="", markup=False, highlight=False),
    )
