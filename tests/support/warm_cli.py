"""`gan-dist` in its own process without paying its imports each time: a fork server.

Most of a tiny `gan-dist train` in the tests is Python importing torch, torch._dynamo (which
any optimiser's constructor pulls in), MLflow and torchmetrics: 4-7 s of CPU of a 7 s run on
this machine, and the suite starts a few hundred. A server imports them once per test
process; `command()` gives the argv that runs `gan-dist` through it:

    python warm_cli.py --client SOCKET ARGS...

That client is a small process (no torch) that hands its working directory, environment,
umask and stdin/stdout/stderr to the server, which forks the command: it imports gan_dist
and runs `sys.exit(main())` at the top level of its `__main__`, as the console script does,
so CPython itself prints an uncaught exception, exits 120 on a closed stdout, dies by
SIGINT after an uncaught Ctrl-C and finalises. The command leads a process group of its
own; the client forwards the signals it gets (to the whole group where the client leads
one, as `os.killpg` on a cold command reaches its DataLoader workers), and leaves as the
command left: the same exit code, or death by the same signal. If the client is killed
outright (SIGKILL, a `subprocess` timeout), the server kills the command's group, a moment
later. SIGSTOP cannot be forwarded. So a test drives it like the console script, with
`subprocess.run` or `Popen`, pipes, signals and timeouts. The command is its own process:
its own pid, signal handlers, open files, exit status and memory. Its pid is not the
client's, and its parent is not the test: tests that look at pids start the console script.

What a fork cannot give is a cold start, so `command()` gives the console script itself when
a test asks (`cold=True`: start-up and import checks, and runs compared bit for bit, which
must not share the server's hash seed) and when the environment differs from the server's
in a variable read at import time (IMPORT_TIME: Python's, the locale's, torch's, CUDA's,
the terminal's); and the client execs the console script itself on a terminal, where rich
would set its consoles up otherwise than for the server's pipes. Resource limits and CPU
affinity are the server's.

This is a preloading fork server, as Python's `multiprocessing.forkserver` and Android's
zygote are. Each request forks a monitor, which forks the command and reports its wait
status, so the server never waits and a command's own children get an ordinary SIGCHLD.
The server runs no Python thread; the native threads its imports start (torch's, pyarrow's
jemalloc) sit idle, as they do when a DataLoader forks its workers. What it imported is
frozen (`gc.freeze`) before it serves: a command's collections, the one at its exit
included, pass over those objects (and do not copy their pages), so cyclic garbage among
them is never collected in a command, as it would rarely be in a short cold one.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# read when a module is imported, not when used: by Python itself, torch, and rich's consoles
# that gan_dist.cli makes at import (their width is fixed there for a pipe: not COLUMNS)
IMPORT_TIME = ("PYTHON", "OMP_", "MKL_", "KMP_", "LD_", "TORCH", "CUDA", "NCCL", "PYTORCH")
IMPORT_TIME += ("TERM", "NO_COLOR", "FORCE_COLOR", "COLORTERM", "TTY_", "TYPER_")
IMPORT_TIME += ("LANG", "LC_", "OPENBLAS_", "GOMP_", "MALLOC_", "WDS_", "MLFLOW_CONFIGURE_")
IMPORT_TIME += ("MLFLOW_LOGGING_",)
# what the client passes on to the command; SIGKILL and SIGSTOP cannot be caught
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
FORWARDED += (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT)


# read when used, so a fork honours them: PYTHONPATH (see _python_path), and the cache
# folder that torch itself writes into the environment of a process that compiles
READ_WHEN_USED = ("PYTHONPATH", "TORCHINDUCTOR_CACHE_DIR")


def _read_at_import(env: dict[str, str]) -> dict[str, str]:
    """The variables a fork cannot honour."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME) and k not in READ_WHEN_USED}


def _python_path(env: dict[str, str], cwd: str) -> list[str]:
    """What $PYTHONPATH puts on sys.path at start-up: each entry made absolute, an empty
    one meaning the working directory."""
    given = env.get("PYTHONPATH")
    return [os.path.abspath(os.path.join(cwd, e)) for e in given.split(os.pathsep)] if given else []


def _lines(conn: socket.socket):
    """The newline-ended messages arriving on `conn`, one at a time."""
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the warm gan-dist server closed the connection")
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield line


class WarmCli:
    """One fork server for this test process, started on first use, stopped at exit."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._folder = self._socket = ""
        self._env: dict[str, str] = {}
        self._at_import: dict[str, str] = {}  # the server's, which a command must match

    def command(self, env: dict[str, str], cold: bool = False) -> list[str]:
        """The argv prefix that runs `gan-dist` with `env`: through the server, or the
        console script itself where `cold` or the environment differs at import time."""
        if not cold:
            self._start(env)
            if _read_at_import(env) == self._at_import:
                return [sys.executable, __file__, "--client", self._socket]
        exe = Path(sys.executable).with_name("gan-dist")
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "gan_dist"]

    def _start(self, env: dict[str, str]) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._folder = tempfile.mkdtemp(prefix="warm-cli-")
        self._socket = os.path.join(self._folder, "socket")
        self._env = dict(env)
        self._at_import = _read_at_import(self._env)
        # stdin stays a pipe from this process: the server exits when it reads EOF, so it
        # never outlives the tests, however they end
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", self._socket],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self._folder, "server.log"), "wb"),  # noqa: SIM115
            env=self._env,
        )
        deadline = time.monotonic() + 180
        while not os.path.exists(self._socket):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self._folder, "server.log").read_text(errors="replace")
                raise RuntimeError(f"the warm gan-dist server did not start: {log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            shutil.rmtree(self._folder, ignore_errors=True)


# --- the client: `python warm_cli.py --client SOCKET ARGS...` ---


def _client(path: str, args: list[str]) -> None:
    if any(os.isatty(fd) for fd in (0, 1, 2)):  # rich set its consoles up for a pipe
        exe = Path(sys.executable).with_name("gan-dist")
        os.execv(exe, [str(exe), *args])
    # held until the command's pid is known, then forwarded: none is lost in between
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(path)
    umask = os.umask(0)
    os.umask(umask)
    request = {"args": args, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask}
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    replies = _lines(conn)
    pid = json.loads(next(replies))["pid"]
    # a client that leads its own group (start_new_session) stands for that group, as
    # `os.killpg` on a cold command reaches its DataLoader workers too
    send = os.killpg if os.getpgid(0) == os.getpid() else os.kill

    def forward(sig: int, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            send(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    status = json.loads(next(replies))["status"]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP keep theirs
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    sys.exit(os.WEXITSTATUS(status))


# --- the server: `python warm_cli.py --serve SOCKET` ---


PRELOAD = ("torch", "torchmetrics", "mlflow", "accelerate", "webdataset", "safetensors.torch")
PRELOAD += ("pydantic", "PIL.Image", "scipy", "pandas", "yaml", "typer", "rich")
BASE_PATH: list[str] = []  # the server's sys.path after the script's folder and PYTHONPATH
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _preload() -> None:
    """The third-party packages the commands import, imported once, and the optimiser path
    that pulls in torch._dynamo. Not gan_dist itself (0.4 s): each command imports it as a
    cold process does, so its module-level state (the plugin entry points it has read, the
    CLI's consoles) starts as a cold process's does."""
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    # the preloaded half-million objects out of the collector's sight (gc.freeze's own use
    # case): a command's collections, and the full one at its exit, would walk them all,
    # 2 s a command here, and copy every page they touch
    gc.freeze()


def _become(request: dict, fds: list[int]) -> None:
    """In the forked command: take the client's stdio, directory, environment, umask and
    arguments, and the signal handling of a fresh interpreter, in a process group of its
    own (the client's forwarding and the monitor's kill reach the command's children)."""
    import importlib

    os.setpgid(0, 0)
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # found again from $TMPDIR on first use, as at start-up
    console_script = Path(sys.executable).with_name("gan-dist")
    sys.argv = [str(console_script), *request["args"]]
    sys.path[:] = [str(console_script.parent), *_python_path(request["env"], request["cwd"])]
    sys.path += BASE_PATH
    importlib.invalidate_caches()  # plugins pip-installed since the server started
    import numpy as np

    np.random.seed()  # numpy's global generator would otherwise repeat the server's


def _monitor(conn: socket.socket, fds: list[int]) -> bool:
    """Fork the command; True in the command. In the monitor: report the command's pid and
    then its wait status, kill its group if the client goes (killed outright, or a
    timeout's kill), and exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        return True
    try:
        os.setpgid(pid, pid)  # here too, so the group exists before the client can signal it
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        exited = os.pidfd_open(pid)
        ready, _, _ = select.select([conn, exited], [], [])
        if exited not in ready:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with contextlib.suppress(OSError):  # the client may be gone
            conn.sendall(json.dumps({"status": status}).encode() + b"\n")
    finally:
        os._exit(0)


def _request(conn: socket.socket) -> tuple[dict, list[int]] | None:
    """A client's request and its stdio, or None for one that went or never sent it."""
    conn.settimeout(30)
    try:
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while message and not message.endswith(b"\n"):
            chunk = conn.recv(1 << 20)
            message = message + chunk if chunk else b""
    except OSError:
        return None
    if message.endswith(b"\n") and len(fds) == 3:
        conn.settimeout(None)
        return json.loads(message), fds
    for fd in fds:
        os.close(fd)
    return None


def _serve(path: str) -> tuple[dict, list[int]]:
    """Serve until stdin closes (then exit); in a forked command, return its request."""
    own = _python_path(dict(os.environ), os.getcwd())
    BASE_PATH.extend(entry for entry in sys.path[1:] if entry not in own)
    for sig in STOPS:  # a Ctrl-C meant for pytest reaches commands through their clients
        signal.signal(sig, signal.SIG_IGN)
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors reap themselves
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the client waits for the name: it exists once bound
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready:  # the tests' process closed its end, or died
            os.unlink(path)
            sys.exit(0)
        conn, _ = listener.accept()
        got = _request(conn)
        if got is not None:
            request, fds = got
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                listener.close()
                try:
                    if _monitor(conn, fds):
                        return request, fds
                except BaseException:
                    os._exit(1)
            for fd in fds:
                os.close(fd)
        conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        _client(sys.argv[2], sys.argv[3:])
    else:
        _become(*_serve(sys.argv[2]))
        # as the console script ends: CPython's own exit, excepthook and finalisation
        from gan_dist.cli import main

        sys.exit(main())
