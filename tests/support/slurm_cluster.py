"""A real single-node SLURM cluster (slurmctld + slurmd + munge) for the launch tests.

Debian's slurm-wlm and munge are installed on first use when we are root and they are
missing (CI runs as root on a fresh machine); the daemons listen on free loopback ports
with their state in a temporary folder, and are stopped by pid. Where the cluster cannot
start (not root, no apt-get), `unavailable()` says why so the tests skip with that reason,
except under CI, where the tests fail instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.debian_packages import apt_install

PACKAGES = ("slurm-wlm", "munge")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; run the tests as root (CI does)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install slurm-wlm"
    return None


def install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    apt_install(PACKAGES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    pids: list[int] = field(default_factory=list)
    munged: int | None = None  # the machine's munged where this cluster started it

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(part.split("=", 1) for part in out.split() if "=" in part)

    def wait_for_state(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout}s: {info}")

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root", timeout=20)
        self.run("scontrol", "shutdown", timeout=20)
        _wait_gone(self.pids, timeout=20)
        if self.munged is not None:  # `scontrol shutdown` leaves it running
            stop_pid(self.munged)


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait for `pids` to exit; SIGKILL those still there after `timeout` s."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if `pid` is still there after `timeout` s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def common_conf(root: Path, auth_info: str, node_files: str) -> list[str]:
    """The slurm.conf lines every test cluster shares: root runs everything, munge signs,
    no cgroups, accounting or MPI; state, spool, pid and log files under `root`, the slurmd
    ones named with `node_files` ("" for one node, "-%n": one per node name)."""
    return [
        "SlurmUser=root",
        "AuthType=auth/munge",
        # a requeued job may start once its old credential expires (default 120 s)
        auth_info,
        "CredType=cred/munge",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "ReturnToService=2",
        "KillWait=20",
        # a requeued job becomes eligible after cred_expire; by default only the backfill pass
        # (every 30 s) or the main loop (every 60 s) would then start it
        "SchedulerParameters=bf_interval=1,sched_interval=2",
        "MinJobAge=600",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / f'spool{node_files}'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / f'slurmd{node_files}.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / f'slurmd{node_files}.log'}",
    ]


def start(root: Path, cpus: int | None = None, timeout: float = 60) -> Cluster:
    install()
    root.mkdir(parents=True, exist_ok=True)
    cpus = cpus or os.cpu_count() or 2
    munged = _start_munge(root)
    for d in ("state", "spool", "log"):
        (root / d).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=gandist",
                "SlurmctldHost=localhost",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                *common_conf(root, "AuthInfo=cred_expire=10", node_files=""),
                f"NodeName=localhost CPUs={cpus} RealMemory=16000 State=UNKNOWN",
                "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    cluster = Cluster(root, conf, munged=munged)
    for cmd, pidfile in (
        (["slurmctld", "-f", str(conf)], "slurmctld.pid"),
        (["slurmd", "-f", str(conf), "-N", "localhost"], "slurmd.pid"),
    ):
        subprocess.run(cmd, check=True, env=cluster.env, timeout=30)
        cluster.pids.append(_read_pid(root / pidfile, timeout=15))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-o", "%T").stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.5)
    cluster.stop()
    log = (root / "log" / "slurmctld.log").read_text()[-2000:]
    raise RuntimeError(f"SLURM node never became idle (last state {state!r}):\n{log}")


def _start_munge(root: Path) -> int | None:
    """The pid of the machine's munged where it had to be started; None where one runs
    already (it serves every cluster)."""
    if MUNGE_SOCKET.exists():
        probe = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=False)
        if probe.returncode == 0:
            return None
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
    pidfile = MUNGE_SOCKET.parent / "munged.pid"
    pidfile.unlink(missing_ok=True)
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True, timeout=30)
    return _read_pid(pidfile, timeout=10)


def _read_pid(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"{path} was not written within {timeout}s")
