"""What a user must check on their own cluster before a SLURM job, for the recipe at hand:
`gan-dist launch --slurm --dry-run` prints it under the script.

What breaks first across nodes is not in the script: the network interface the ranks talk on
(a node with an Ethernet and an InfiniBand address picks one by its host name, not
necessarily the one the nodes share), the port rank 0 listens on, and storage that every
node sees at the same path (run dir, shards, the Python environment). This machine can only
say what it sees from here, and says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gan_dist.config.recipe import Recipe
from gan_dist.launch import port

# file systems that several machines mount at once; anything else is local to one host
SHARED_FS = {
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs",
    "fuse.glusterfs", "fuse.cephfs", "fuse.sshfs", "wekafs", "panfs", "fuse.juicefs",
    "fuse.s3fs", "fuse.gcsfuse", "virtiofs", "9p", "cifs", "smb3",
}  # fmt: skip


def file_system(path: Path) -> str:
    """The type of the file system `path` is on (or will be, when it is made), as
    /proc/mounts names it ("nfs4", "ext4", ...); "unknown" where none matches."""
    import psutil

    real = os.path.realpath(path.absolute())  # symlinks followed as far as the path exists
    best, kind = "", "unknown"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, part.fstype
    return kind


def storage_line(what: str, where: str, made_by_the_job: bool = False) -> str:
    """Whether every node can read `where`: a path, a brace pattern of shards, a `file:`,
    object-store or web URL, a pipe:. Shards the job reads but that are not here (as a real
    launch checks them: `shard_urls`) are said to be missing, not given the file system of
    the folder that would hold them; what the job makes (`made_by_the_job`, the run dir) is
    judged where it will be made."""
    from gan_dist.core.errors import GanDistError
    from gan_dist.data.stream import shard_urls

    if where.startswith("pipe:"):
        return f"{what} {where}: a command every node runs; it must work on each of them"
    local = where.removeprefix("file://")
    if "://" in local:
        return f"{what} {where}: read over the network by every node; give each its credentials"
    if not made_by_the_job and not Path(local).is_dir():
        try:
            shard_urls(local)
        except GanDistError as exc:
            reason = str(exc).removeprefix(f"{local}: ")
            return (
                f"{what} {where}: not found on this machine: {reason}; every node must see it "
                "at this same path when the job runs"
            )
    # a brace pattern's folder: what comes before its first "{" up to the last "/"
    path = Path(local.split("{", 1)[0] + "x").parent if "{" in local else Path(local)
    kind = file_system(path)
    if kind in SHARED_FS:
        return f"{what} {where}: on {kind}, a shared file system: every node must mount it here too"
    return (
        f"{what} {where}: on {kind}, local to this machine as far as it shows: every node must "
        "see it at this same path (put it on the cluster's shared file system)"
    )


def cluster_checks(recipe: Recipe, run_dir: Path) -> list[str]:
    """One line per check: the network interface and rank 0's port when the job spans
    nodes, and storage for the run dir, the shards and the Python environment."""
    import sys

    launch = recipe.launch
    lines = []
    if launch.nodes > 1:
        variable = "NCCL_SOCKET_IFNAME" if launch.gpus_per_node else "GLOO_SOCKET_IFNAME"
        chosen = os.environ.get(variable)
        if chosen and all(re.fullmatch(r"\^?[A-Za-z0-9_.:@-]{1,15}", n) for n in chosen.split(",")):
            lines.append(f"network: {variable}={chosen} in this shell; sbatch passes it on")
        elif chosen is not None:
            lines.append(
                f"network: {variable}={chosen[:60]!r} in this shell is not a list of interface "
                "names (up to 15 letters, digits or ._:@- each, comma-separated, e.g. ib0); "
                "fix it before you submit: sbatch passes it on"
            )
        else:
            lines.append(
                f"network: {variable} is not set: where nodes have several networks, set it "
                "to the interface they share (`ip -br addr` on a node lists them, e.g. ib0) "
                "in the shell you submit from; sbatch passes it on"
            )
        listens = f"launch.main_port {launch.main_port}" if launch.main_port else port.FROM_JOB_ID
        lines.append(
            f"port: rank 0 listens on {listens} on the job's first node; the other nodes must "
            "reach it there (no firewall between the nodes)"
        )
    lines.append(storage_line("run dir", str(run_dir.resolve()), made_by_the_job=True))
    lines.append(storage_line("data.train", recipe.data.train))
    if recipe.data.val not in (None, "auto"):
        lines.append(storage_line("data.val", recipe.data.val))
    lines.append(storage_line("python", sys.prefix))
    return lines
