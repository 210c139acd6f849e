"""Installing the Debian packages a test service needs (CI runs as root on a fresh machine)."""

from __future__ import annotations

import os
import subprocess

from filelock import FileLock

# test workers (pytest-xdist) that each start a service install one at a time: a second
# apt-get beside the first fails on dpkg's lock instead of waiting
LOCK = "/tmp/gan-dist-tests-apt.lock"


def apt_install(packages: tuple[str, ...]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with FileLock(LOCK, timeout=900):
        if _installed(packages):  # by the worker that held the lock before us
            return
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=True,
            env=env,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )


def _installed(packages: tuple[str, ...]) -> bool:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
    )
    lines = status.stdout.split()
    return status.returncode == 0 and lines == ["installed"] * len(packages)
