"""Files written whole or not at all: what checkpoints, run status, launch scripts, packs
and repaired images are written through."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (a thread that
    creates a file while it is briefly 0 would make it world-writable), else once, here,
    at import."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through: a temp file in the same folder, renamed over
    `path` only when the block ends without an error, so a reader never sees half a file
    and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)  # reopened by name: tifffile needs a file object whose name is a path
    try:
        with open(tmp, "wb") as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
