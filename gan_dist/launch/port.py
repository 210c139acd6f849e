"""Rank 0's port on the main node, as the SLURM script picks it.

The script runs on the allocation's first node, where rank 0 runs, and hands the port to
every node's launcher, so all agree on it. It starts from a port derived from the job id
(two jobs on one node do not collide); a port already in use there (another job's rendezvous,
a service, a job id that maps onto a busy port) failed only when torch bound it, with a
traceback on one node and the others waiting for the timeout (Megatron-LM #1371,
accelerate #2246). Here the first free port from there on is taken; a port the recipe fixes
(`launch.main_port`) is checked and refused in one line if taken. A check, not a lock: a
process that takes the port in the seconds between this check and torch's bind still fails
the rendezvous as before (the race NVIDIA's mlperf-common PR #9 works around).

`python -m gan_dist.launch.port BASE [--fixed]` prints the port or the error (exit 1).
Nothing heavy is imported: the script runs it before every job.
"""

from __future__ import annotations

import socket
import sys

SEARCH = 100  # ports tried from BASE on
# the base a job's id gives: BASE + job id % SPAN, so two jobs on one node rarely share it
BASE, SPAN = 20000, 40000
FROM_JOB_ID = f"the first free port from {BASE} + job id % {SPAN}"  # as the docs say it
JOB_BASE_SHELL = f'"$(({BASE} + SLURM_JOB_ID % {SPAN}))"'  # as the sbatch script computes it


def is_free(port: int) -> bool:
    """Whether a listening socket can bind `port` on every address of this host now. Like
    torch's store, with SO_REUSEADDR: a port whose last connection lingers in TIME_WAIT (the
    previous job on this node, a minute ago) is free; a listener on it is not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick(base: int, fixed: bool) -> int:
    """The first free port in [base, base + SEARCH), or `base` alone when `fixed`. Raises
    ValueError saying which ports were taken and what to do."""
    host = socket.gethostname()
    if fixed:
        if is_free(base):
            return base
        raise ValueError(
            f"launch.main_port {base} is in use on {host}, the main node (another job or a "
            "service holds it); choose another port, or leave launch.main_port unset and "
            "the job picks a free one"
        )
    last = min(base + SEARCH, 65536) - 1
    for port in range(base, last + 1):
        if is_free(port):
            return port
    tried = f"port {base} is" if last == base else f"ports {base}-{last} are all"
    raise ValueError(f"{tried} in use on {host}, the main node; set launch.main_port to a free one")


def main(argv: list[str]) -> int:
    words = [a for a in argv if a != "--fixed"]
    if len(words) != 1 or not words[0].isdigit() or not 1024 <= int(words[0]) <= 65535:
        got = f"got {' '.join(map(repr, words))}" if words else "got no port"
        print(f"usage: python -m gan_dist.launch.port PORT [--fixed], PORT 1024-65535 ({got})",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        print(pick(int(words[0]), "--fixed" in argv))
    except ValueError as exc:
        print(f"gan-dist: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
