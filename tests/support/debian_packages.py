"""Installing the Debian packages a test service needs (CI runs as root on a fresh machine)."""

from __future__ import annotations

import os
import subprocess


def apt_install(packages: tuple[str, ...]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
