"""A real PostgreSQL server for the tests of many jobs on one tracking store (the backend of
an `mlflow server`, as a cluster runs it).

Debian's PostgreSQL is installed on first use when we are root and it is missing (CI runs as
root on a fresh machine), without the "main" cluster its package would otherwise create and
start. The server runs from a data folder of its own in /tmp (PostgreSQL refuses to run as
root, so initdb and the server run as the `postgres` user, or `nobody`), listens on a free
loopback port and a socket in that folder only, and is stopped by its postmaster's pid.
Where none can start (no binaries, no apt-get), `unavailable()` says why so that the tests
skip with that reason, except under CI, where they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from support.debian_packages import apt_install

PACKAGES = ("postgresql",)
USER = "mlflow"  # the database superuser initdb makes (trust auth, loopback only)
NO_MAIN_CLUSTER = Path("/etc/postgresql-common/createcluster.d/gan-dist-tests.conf")


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them per version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why no server can be started here, or None."""
    if bin_dir() is not None:
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and cannot be here (it needs root and apt-get)"
    return None


def install() -> Path:
    found = bin_dir()
    if found is not None:
        return found
    # the package would create and start a cluster on port 5432; we want only our own
    NO_MAIN_CLUSTER.parent.mkdir(parents=True, exist_ok=True)
    NO_MAIN_CLUSTER.write_text("create_main_cluster = false\n")
    apt_install(PACKAGES)
    found = bin_dir()
    if found is None:
        raise RuntimeError(f"apt-get installed {PACKAGES} but no initdb is in /usr/lib/postgresql")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> list[str]:
    """PostgreSQL refuses root: run its programs as `postgres` (made by the package) or
    `nobody`; as another user, as that user."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and there is neither a postgres nor a nobody user")


@dataclass
class Postgres:
    root: Path
    bin: Path
    port: int
    pid: int

    def uri(self, database: str) -> str:
        """An SQLAlchemy URI for MLflow: psycopg 3 (the dev extra), named explicitly."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self.uri(name)

    def stop(self) -> None:
        """SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop -m fast` sends)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def start(timeout: float = 60) -> Postgres:
    """A fresh cluster in its own folder under /tmp (pytest's tmp folders are root-only,
    which the `postgres` user cannot enter)."""
    bin_ = install()
    root = Path(tempfile.mkdtemp(prefix="gan-dist-pg-"))
    as_user = _run_as()
    if as_user:
        owner = as_user[2]
        shutil.chown(root, owner, owner)
    data, log = root / "data", root / "server.log"
    try:
        subprocess.run(
            [
                *as_user,
                str(bin_ / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = _free_port()
        options = (
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=100"
        )
        started = subprocess.run(
            [
                *as_user,
                str(bin_ / "pg_ctl"),
                "start",
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
        )
        if started.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else started.stderr
            raise RuntimeError(f"PostgreSQL did not start:\n{tail}")
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Postgres(root, bin_, port, pid)
