"""Launch on this machine (or as one node of several): Accelerate's launcher, one process per
local GPU, or `cpu_procs` gloo processes where there is no GPU, each running `gan-dist train`.

The command is built here once and used everywhere (this launcher, the SLURM script, the
tests and benchmarks), because its CPU form is a trap: `--cpu` starts ONE process, and
without `ACCELERATE_USE_CPU=1` a CPU-only host silently runs N independent world-size-1 jobs.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gan_dist.config.recipe import Recipe, recipe_to_yaml
from gan_dist.core.errors import GanDistError
from gan_dist.core.files import write_bytes_atomic
from gan_dist.run import checkpoint
from gan_dist.run import status as run_status
from gan_dist.run.runlock import check_free
from gan_dist.run.signals import EXIT_PREEMPTED

# SIGUSR1 is SLURM's warning signal: Accelerate's launcher (torch elastic) must pass it on to
# the ranks instead of dying of it, and give them time to write the checkpoint.
HANDLED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
DEFAULT_SHUTDOWN_S = 120
# Accelerate's launcher behind a one-line report of a signal (see launcher.py)
LAUNCHER = "gan_dist.launch.launcher"


@dataclass(frozen=True)
class Topology:
    """Where the ranks run: `nodes` machines with `per_node` processes each."""

    nodes: int
    per_node: int
    gpu: bool

    @property
    def world(self) -> int:
        return self.nodes * self.per_node


def local_topology(recipe: Recipe) -> Topology:
    """One process per GPU here (or the recipe's gpus_per_node), else cpu_procs on the CPU."""
    import torch

    launch = recipe.launch
    found = torch.cuda.device_count()
    if found:
        per_node = launch.gpus_per_node or found
        if per_node > found:
            raise GanDistError(
                f"launch.gpus_per_node is {per_node} but this machine has {found} GPU(s); "
                f"use --gpus-per-node {found} or run on a larger node"
            )
        return Topology(launch.nodes, per_node, gpu=True)
    return Topology(launch.nodes, launch.cpu_procs, gpu=False)


def accelerate_options(topology: Topology) -> list[str]:
    return [
        "--multi_gpu",  # also what starts N gloo processes on a CPU-only host
        "--num_machines",
        str(topology.nodes),
        "--num_processes",
        str(topology.world),  # Accelerate's total over all machines
        # the recipe sets these in the trainer; "no" here only silences the launcher's guesses
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def node_command(topology: Topology, per_node: list[str], train: list[str]) -> list[str]:
    """What one node runs: Accelerate's launcher with this node's rank, address and port, or
    for a single process the trainer itself (Accelerate's --multi_gpu needs two or more, and
    one process needs no launcher between it and the signals)."""
    if topology.world == 1:
        return [sys.executable, *train]
    launcher = [sys.executable, "-m", LAUNCHER]
    return [*launcher, *per_node, *accelerate_options(topology), *train]


def per_node_args(machine_rank: str, main_addr: str, main_port: str) -> list[str]:
    return [
        "--machine_rank",
        machine_rank,
        "--main_process_ip",
        main_addr,
        "--main_process_port",
        main_port,
    ]


def train_args(recipe_file: Path, run_dir: Path) -> list[str]:
    return ["-m", "gan_dist", "train", str(recipe_file), "--run-dir", str(run_dir)]


def launch_env(topology: Topology, shutdown_s: int = DEFAULT_SHUTDOWN_S) -> dict[str, str]:
    env = {"PET_SIGNALS_TO_HANDLE": HANDLED_SIGNALS, "PET_SHUTDOWN_TIMEOUT": str(shutdown_s)}
    if not topology.gpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def frozen_recipe(run_dir: Path) -> Path:
    """Where the ranks read their recipe (the SLURM template names the same file)."""
    return run_dir / "launch" / "recipe.yaml"


def freeze_recipe(recipe: Recipe, run_dir: Path) -> None:
    """The resolved recipe (overrides applied) goes to the run dir and the ranks read that
    file: no recipe value is ever put on a command line, and a requeued job trains exactly
    what was submitted even if the original file changed since. A frozen recipe that says
    the same is left as it is (a link stays a link)."""
    frozen = frozen_recipe(run_dir)
    try:
        if _says(frozen, recipe):
            return
    except OSError:  # unreadable: written over, or refused, below
        pass
    write_launch_file(frozen, recipe_to_yaml(recipe).encode())


def _says(frozen: Path, recipe: Recipe) -> bool:
    """`frozen` is a file holding `recipe`; raises OSError where it cannot be read."""
    return frozen.is_file() and frozen.read_bytes() == recipe_to_yaml(recipe).encode()


def write_launch_file(path: Path, data: bytes) -> None:
    """One of RUN_DIR/launch/'s files, whole or not at all; raises GanDistError naming the
    path where it cannot be written (a folder or a file in the way, no permission)."""
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise GanDistError(
            f"{path}: cannot write it ({exc.strerror or exc}); a launch keeps its frozen "
            "recipe and script in RUN_DIR/launch/: clear the way there, or give another "
            "--run-dir"
        ) from None


def kept_for_dry_run(recipe: Recipe, run_dir: Path) -> str | None:
    """Why a dry run must not write its files into `run_dir`, or None where it may (a new
    run dir, or the launch of this same recipe): it holds a run, whose frozen recipe a
    requeued SLURM job reads again. Only a real launch replaces it, and resumes that run
    where the change allows."""
    frozen = frozen_recipe(run_dir)
    if frozen.exists() or frozen.is_symlink():
        try:
            if not frozen.is_file():  # a dangling link, a folder, a FIFO (which would block)
                return (
                    f"dry run: wrote nothing: {frozen} is there, but is not a recipe file; "
                    "move it away, or give another --run-dir"
                )
            if _says(frozen, recipe):
                return None
            holds = f"{frozen} is another recipe, that a requeued job of the run reads"
        except OSError as exc:  # unreadable to us, perhaps not to the run's own user
            holds = f"{frozen} is there, but cannot be read ({exc.strerror or exc})"
    elif _trained_in(run_dir):
        holds = "a run trained there"
    else:
        return None
    return (
        f"dry run: wrote nothing: {run_dir} holds a run ({holds}); a launch without "
        "--dry-run resumes it where the recipe allows, another --run-dir starts a new run"
    )


def _trained_in(run_dir: Path) -> bool:
    """`gan-dist train` ran in `run_dir`: it leaves its recipe (even as a broken link), how
    the run ended, or checkpoints."""
    marks = (run_dir / checkpoint.RECIPE_FILE, run_dir / run_status.STATUS_FILE)
    return any(m.exists() or m.is_symlink() for m in marks) or bool(
        checkpoint.list_checkpoints(run_dir)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(
    recipe: Recipe,
    run_dir: Path,
    node_rank: int = 0,
    main_addr: str = "127.0.0.1",
    dry_run: bool = False,
    announce=print,
) -> int:
    """Run this node's share of the job in the foreground; returns the exit code to use:
    0 completed, 75 preempted (checkpoint written), else the launcher's failure code."""
    topology = local_topology(recipe)
    if topology.nodes > 1 and recipe.launch.main_port is None:
        raise GanDistError(
            "launch.main_port: several nodes must agree on a port; pass --main-port or "
            "set launch.main_port in the recipe"
        )
    if not 0 <= node_rank < topology.nodes:
        raise GanDistError(f"--node-rank {node_rank}: must be in 0..{topology.nodes - 1}")
    if not topology.gpu and recipe.launch.gpus_per_node:
        announce(
            f"note: launch.gpus_per_node is {recipe.launch.gpus_per_node} but this machine has "
            f"no GPU; running {topology.per_node} CPU process(es) (--cpu-procs)"
        )
    port = str(recipe.launch.main_port or free_port())
    per_node = per_node_args(str(node_rank), main_addr, port)
    cmd = node_command(topology, per_node, train_args(frozen_recipe(run_dir), run_dir))
    env = launch_env(topology)
    check_free(run_dir)  # before the frozen recipe of a running job is replaced
    kept = kept_for_dry_run(recipe, run_dir) if dry_run else None
    if kept is None:
        freeze_recipe(recipe, run_dir)  # the command reads it, so a dry run writes it too
    announce("running " + shlex.join([*(f"{k}={v}" for k, v in env.items()), *cmd]))
    if dry_run:
        announce(kept or f"dry run: wrote {frozen_recipe(run_dir)}, which that command reads")
        return 0
    before = run_status.read(run_dir)
    started = time.time()
    proc = subprocess.Popen(cmd, env={**os.environ, **env})
    # a signal to this process alone (kill PID, not the process group) still reaches the ranks
    forward = {
        sig: signal.signal(sig, lambda s, _f: proc.send_signal(s))
        for sig in (signal.SIGTERM, signal.SIGUSR1)
    }
    try:
        code = proc.wait()
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)
    return outcome_code(run_dir, code, before, started, holds_rank_0=node_rank == 0)


class UnfinishedRun(GanDistError):
    """The trainer exited 0, but its status.json does not say it completed."""


def outcome_code(
    run_dir: Path, code: int, before: dict | None, since: float, holds_rank_0: bool = True
) -> int:
    """The exit code for the trainer's `code`, read with the status file rank 0 wrote (one
    from before this launch, `before` or older than `since`, does not count): Accelerate's
    launcher exits 1 when a signal reached it, whatever the ranks did, so a `preempted` run
    is 75. Where rank 0 ran here (`holds_rank_0`), an exit 0 counts only with `completed`
    and an exit 75 only with `preempted`: code that ends its process at once (os._exit)
    skips every handler and leaves the status unfinished (with 75, a wrapper that runs the
    job again on it would loop with no checkpoint), so that is said, raising UnfinishedRun."""
    after = run_status.read(run_dir)
    path = run_dir / run_status.STATUS_FILE
    fresh = after is not None and (after != before or path.stat().st_mtime >= since)
    if fresh and after["status"] == "preempted":
        return EXIT_PREEMPTED
    claims = {0: "completed", EXIT_PREEMPTED: "preempted"}.get(code)
    if claims and holds_rank_0 and not (fresh and after["status"] == claims):
        if fresh:
            said = f"its {path} says {after['status']} at step {after['step']}"
        else:
            said = f"it did not write {path}"
        raise UnfinishedRun(
            f"the trainer exited {code} but {said}: something in the process ended it "
            "without finishing (a call of os._exit, which nothing can catch, or a status "
            "that could not be written: see the warnings above); training did not "
            f"{'complete' if code == 0 else 'stop with a checkpoint'}"
        )
    return code


def failure_hint(run_dir: Path, since: float) -> str:
    """What to say after a failed run, from what its status.json says (if written after
    `since`, a time.time()): a trainer that reported its own error (a recipe or data problem,
    a full disk) needs no pointer to a failed rank; a rank that died without a word does. A
    checkpoint is offered only if there is one."""
    path = run_dir / run_status.STATUS_FILE
    fresh = path.is_file() and path.stat().st_mtime >= since
    status = (run_status.read(run_dir) if fresh else None) or {}
    if status.get("status") == "failed" and status.get("cause") == "user":
        text = f"training stopped on an error ({status.get('error', 'see above')})"
    elif status.get("status") == "failed":
        text = (
            f"a rank failed ({status.get('error', 'see above')}); the launcher's report above "
            "names the rank that failed first"
        )
    elif status.get("status") == "running":  # the script said which, from srun's exit code
        text = (
            f"the trainer ended without finishing at step {status.get('step')}: a rank died "
            "without reporting, or something in it called os._exit (see the lines above)"
        )
    else:
        text = "a rank died without reporting; the launcher's report above names it"
    kept = checkpoint.list_checkpoints(run_dir)
    if kept:
        text += f"; the last checkpoint {kept[0].name} is kept, run the same command to resume"
    return text
