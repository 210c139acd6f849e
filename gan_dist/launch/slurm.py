"""SLURM: render the sbatch script (template `slurm/gan-dist.sbatch`), submit it, follow it.

The script runs one Accelerate launcher per node through srun. It asks SLURM for SIGUSR1
before the time limit and requeues itself when rank 0 reports a preemption checkpoint, so a
requeued job resumes from that checkpoint in the same MLflow run (the run id is in it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gan_dist import __version__
from gan_dist.config.recipe import Recipe, SlurmConfig
from gan_dist.core.errors import GanDistError
from gan_dist.launch import port
from gan_dist.launch.local import (
    DEFAULT_SHUTDOWN_S,
    LAUNCHER,
    Topology,
    accelerate_options,
    freeze_recipe,
    launch_env,
    write_launch_file,
)

CPUS_PER_GPU = 8
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
}
# #SBATCH lines are parsed by sbatch, not a shell: a path there must be one plain word.
_SBATCH_PATH = re.compile(r"^[^\s'\"\\%]+$")


def template_path() -> Path:
    """Shipped inside the wheel; from a source checkout it lives at the repo root."""
    name = Path("slurm") / "gan-dist.sbatch"
    packaged = Path(__file__).parents[1] / name
    return packaged if packaged.is_file() else Path(__file__).parents[2] / name


def topology(recipe: Recipe) -> Topology:
    """What to ask SLURM for: the recipe's GPUs per node, or cpu_procs CPU ranks per node."""
    launch = recipe.launch
    if launch.gpus_per_node:
        return Topology(launch.nodes, launch.gpus_per_node, gpu=True)
    return Topology(launch.nodes, launch.cpu_procs, gpu=False)


def render(recipe: Recipe, run_dir: Path) -> str:
    run_dir = run_dir.resolve()
    log = run_dir / "slurm-%j.log"
    if not _SBATCH_PATH.match(str(run_dir)):
        raise GanDistError(
            f"--run-dir {run_dir}: SLURM reads the log path from an #SBATCH line, which cannot "
            "hold spaces, quotes, backslashes or '%'; choose a plainer path"
        )
    slurm = recipe.launch.slurm or SlurmConfig()
    topo = topology(recipe)
    shutdown = min(DEFAULT_SHUTDOWN_S, max(10, slurm.signal_lead_s - 30))
    srun_extra = "".join(f" {shlex.quote(opt)}" for opt in slurm.srun_extra)
    exports = "\n".join(
        f"export {k}={shlex.quote(v)}" for k, v in launch_env(topo, shutdown).items()
    )
    values = {
        "version": __version__,
        "recipe_name": recipe.name,
        "sbatch_lines": "\n".join(f"#SBATCH {o}" for o in _sbatch_options(recipe, slurm, topo)),
        "signal_lead_s": str(slurm.signal_lead_s),
        "log": str(log),
        "run_dir": shlex.quote(str(run_dir)),
        "workdir": shlex.quote(str(Path.cwd())),
        "python": shlex.quote(sys.executable),
        "exports": exports,
        "world": str(topo.world),
        "per_node": str(topo.per_node),
        "rank_timeout_s": str(recipe.launch.rank_timeout_s),
        "srun_extra": srun_extra,
        "node_command": _node_command(topo),
        "max_requeues": str(slurm.max_requeues),
        "main_port": _main_port(recipe, topo),
    }
    text = template_path().read_text()
    missing = set(re.findall(r"{{(\w+)}}", text)) - set(values)
    if missing:
        raise GanDistError(f"{template_path()}: unknown placeholders {sorted(missing)}")
    return re.sub(r"{{(\w+)}}", lambda m: values[m.group(1)], text)


def _main_port(recipe: Recipe, topo: Topology) -> str:
    """The script's expression for rank 0's port: picked on the main node when there is a
    rendezvous (see `port.py`); a single rank opens none."""
    if topo.world == 1:
        return "none  # a single rank: no rendezvous, no port"
    base = recipe.launch.main_port
    pick = f"{base} --fixed" if base else port.JOB_BASE_SHELL
    return f'$("$PYTHON" -m gan_dist.launch.port {pick}) || exit 1'


def _node_command(topo: Topology) -> str:
    """One node's launcher. The single quotes keep $SLURM_NODEID for each task's own shell,
    so every node gets its own machine rank; a single rank runs the trainer directly."""
    if topo.world == 1:
        return '"$PYTHON"'
    per_task = f"""'exec "$0" -m {LAUNCHER} --machine_rank "$SLURM_NODEID" "$@"'"""
    options = " ".join(shlex.quote(a) for a in accelerate_options(topo))
    return "\n".join(
        [
            f"bash -c {per_task} \\",
            f'  "$PYTHON" {options} \\',
            '  --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT"',
        ]
    )


def _sbatch_options(recipe: Recipe, slurm: SlurmConfig, topo: Topology) -> list[str]:
    cpus = slurm.cpus_per_task or (CPUS_PER_GPU * topo.per_node if topo.gpu else topo.per_node)
    options = [
        f"--job-name={slurm.job_name or 'gan-dist-' + recipe.name}",
        f"--nodes={topo.nodes}",
    ]
    if topo.gpu:
        options.append(f"--gpus-per-node={topo.per_node}")
    options.append(f"--cpus-per-task={cpus}")
    for key in ("mem", "partition", "account", "qos", "constraint"):
        value = getattr(slurm, key)
        if value:
            options.append(f"--{key}={value}")
    options.append(f"--time={slurm.time}")
    return options + slurm.extra


def write_script(recipe: Recipe, run_dir: Path) -> Path:
    """The frozen recipe and the script, both in RUN_DIR/launch/ (kept for the record)."""
    text = render(recipe, run_dir)
    freeze_recipe(recipe, run_dir)
    script = run_dir / "launch" / "job.sbatch"
    write_launch_file(script, text.encode())
    return script


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GanDistError(
            f"{name} not found: SLURM's client commands must be on PATH (e.g. `module load "
            "slurm`), or launch without --slurm"
        )
    return path


def submit(recipe: Recipe, run_dir: Path) -> tuple[str, Path]:
    """Returns the job id and the script path."""
    script = write_script(recipe, run_dir)
    result = subprocess.run(
        [_tool("sbatch"), "--parsable", str(script)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise GanDistError(f"sbatch refused {script}: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0], script


def run_in_allocation(recipe: Recipe, run_dir: Path) -> int:
    """Inside `salloc` (or a batch script of the user's): run the same script on this
    allocation, in the foreground; it exits 75 on preemption instead of requeueing."""
    script = write_script(recipe, run_dir)
    env = {**os.environ, "GAN_DIST_IN_ALLOCATION": "1"}
    return subprocess.run(["bash", str(script)], env=env).returncode


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        [_tool("scontrol"), "-o", "show", "job", job_id], capture_output=True, text=True
    ).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def follow(
    job_id: str,
    log: Path,
    say: Callable[[str], None],
    echo: Callable[[str], None],
    poll_s: float = 2.0,
) -> int:
    """Print state changes and the job's log as it grows, until the job ends; 0 only when it
    COMPLETED. A requeued job keeps its id and appends to the same log, so this follows it
    across restarts."""
    state, offset = None, 0
    while True:
        info = job_info(job_id)
        if not info:
            say(f"job {job_id}: no longer known to slurmctld (see sacct, if it keeps accounts)")
            return 1
        current = info["JobState"]
        if log.is_file():
            with log.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            if chunk:
                echo(chunk.decode(errors="replace"))
        if current != state:
            restarts = info.get("Restarts", "0")
            say(f"job {job_id}: {current}" + (f" (restart {restarts})" if restarts != "0" else ""))
            state = current
        if state in TERMINAL:
            return 0 if state == "COMPLETED" else 1
        time.sleep(poll_s)
