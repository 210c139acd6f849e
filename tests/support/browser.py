"""A real headless browser for the UI tests: Debian's Chromium, driven by Playwright (pip).

Chromium is installed on first use when we are root and it is missing (CI runs as root on a
fresh machine; `.ci/run` installs it first). Where it cannot be had, `unavailable()` says
why so that the tests skip with that reason, except under CI, where they fail instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from support.debian_packages import apt_install

PACKAGES = ("chromium",)


def executable() -> Path | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def unavailable() -> str | None:
    """Why no browser can be started here, or None."""
    try:
        import playwright.sync_api  # noqa: F401 - only whether it is there
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if executable() is None and (os.geteuid() != 0 or not shutil.which("apt-get")):
        return "Chromium is not installed and cannot be here (it needs root and apt-get)"
    return None


def install() -> Path:
    if executable() is None:
        apt_install(PACKAGES)
    found = executable()
    if found is None:
        raise RuntimeError(f"apt-get installed {PACKAGES} but no chromium is on PATH")
    return found
