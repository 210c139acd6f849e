"""A real SLURM cluster of several hosts on this one machine, for the multi-node tests.

Each node is a host of its own as far as the job can tell: a network namespace with its own
address (one end of a veth pair; the other end is on a bridge the cluster makes), its own
hostname (a UTS namespace) and its own /etc/hosts (bind-mounted in a mount namespace, naming
every node), running its own slurmd. One slurmctld and one munged of the cluster's own
serve them from this machine's side of the bridge, which is where `sbatch` runs: the login
node. The file system is shared, as a cluster's is.

The links are real: `cut` drops a node's link and `kill_node` kills a node's slurmd and
every process in its namespace. `stop` removes the namespaces, the bridge and the daemons,
also after a failed test; names carry the pid of the process that made them, so a cluster
left by a killed test run is removed by the next one. Needs root and `ip`, `nsenter` and
`unshare` (iproute2 and util-linux); `unavailable()` says why not. (No link shaping: this
machine's kernel has no `sch_netem`; benchmarks/multinode.py limits rates with `tbf`.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import slurm_cluster
from support.debian_packages import apt_install

NETNS_DIR = Path("/run/netns")
# munged runs as the munge user, which cannot reach into pytest's root-only temp folders
RUN_ROOT = Path("/run/gan-dist-tests")
PREFIX = "gdh"  # every bridge, veth and namespace name starts with it and the maker's pid
SUBNETS = ipaddress.ip_network("10.231.0.0/16")


def unavailable() -> str | None:
    """Why no multi-host cluster can be started here, or None."""
    why = slurm_cluster.unavailable()
    if why:
        return why
    missing = [t for t in ("ip", "nsenter", "unshare") if not shutil.which(t)]
    if missing and not shutil.which("apt-get"):
        return f"{', '.join(missing)} missing and no apt-get to install iproute2"
    return None


@dataclass
class Node:
    name: str  # SLURM node name and hostname
    addr: str  # its address on the cluster's bridge
    netns: str
    link: str  # this machine's end of its veth pair: where `cut` acts


@dataclass
class Hosts(slurm_cluster.Cluster):
    """The cluster (`run`, `job`, `wait_for_state` as for one node) and its hosts."""

    nodes: list[Node] = field(default_factory=list)
    bridge: str = ""
    controller_addr: str = ""
    run_dir: Path = Path()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def in_node(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command on that host: its network, hostname and /etc/hosts."""
        return subprocess.run(
            [*_enter(self.node(name), self.run_dir), *cmd],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_in_node(self, name: str, *cmd: str, **popen) -> subprocess.Popen:
        """A process on that host, left running; the caller waits for it or stops it."""
        return subprocess.Popen([*_enter(self.node(name), self.run_dir), *cmd], **popen)

    def cut(self, name: str) -> None:
        """The node's link goes down: nothing reaches it or leaves it; its processes live on."""
        _run("ip", "link", "set", self.node(name).link, "down")

    def mend(self, name: str) -> None:
        _run("ip", "link", "set", self.node(name).link, "up")

    def node_pids(self, name: str) -> list[int]:
        """Every process on that host (its slurmd, job steps and ranks)."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.node(name).netns], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def kill_node(self, name: str) -> None:
        """The host dies: SIGKILL to its slurmd and everything it ran, at once."""
        for pid in self.node_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def start_node(self, name: str, timeout: float = 60) -> None:
        """A dead host's slurmd again (the host rebooted); returns once SLURM sees it."""
        self._start_slurmd(self.node(name))
        self.run("scontrol", "update", f"nodename={name}", "state=resume")
        self.wait_for_nodes("idle", [name], timeout)

    def wait_for_nodes(self, state: str, names: list[str] | None = None, timeout: float = 60):
        names = names or [n.name for n in self.nodes]
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.run("sinfo", "-h", "-N", "-o", "%N %T").stdout
            states = dict(line.split() for line in seen.splitlines() if line.strip())
            if all(states.get(n, "").rstrip("*") == state for n in names):
                return
            time.sleep(0.5)
        log = (self.root / "log" / "slurmctld.log").read_text()[-2000:]
        raise RuntimeError(f"nodes {names} not {state} in {timeout} s: {seen!r}\n{log}")

    def _start_slurmd(self, node: Node) -> None:
        pidfile = self.root / f"slurmd-{node.name}.pid"
        pidfile.unlink(missing_ok=True)
        cmd = [*_enter(node, self.run_dir), "slurmd", "-f", str(self.conf), "-N", node.name]
        subprocess.run(cmd, check=True, env=self.env, timeout=30)
        self.pids.append(slurm_cluster._read_pid(pidfile, timeout=15))

    def stop(self) -> None:
        super().stop()
        for node in self.nodes:
            self.kill_node(node.name)
        _remove(os.getpid(), self.bridge, [n.netns for n in self.nodes], self.run_dir)


def _enter(node: Node, run_dir: Path) -> list[str]:
    """The command prefix that runs on `node`: its network namespace, then a UTS and mount
    namespace of its own for the hostname and /etc/hosts (`ip netns exec` would remount
    /sys, hiding the cgroup file system slurmd needs)."""
    hosts = run_dir / f"hosts-{node.name}"
    setup = f'mount --bind {hosts} /etc/hosts && hostname {node.name} && exec "$@"'
    return [
        "nsenter",
        f"--net={NETNS_DIR / node.netns}",
        "unshare",
        "--uts",
        "--mount",
        "sh",
        "-c",
        setup,
        "sh",
    ]


def _run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_interface(a).network for a in re.findall(r"inet (\S+)", used)]
    for subnet in SUBNETS.subnets(new_prefix=24):
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise RuntimeError(f"no free /24 in {SUBNETS} for a test cluster")


def _remove(pid: int, bridge: str, netns: list[str], run_dir: Path | None) -> None:
    """A cluster's namespaces (and with them their ends of the veth pairs), its bridge, the
    host ends and its run folder; what is already gone is skipped."""
    for name in netns:
        for p in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True
        ).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for link in re.findall(rf"^\d+: ({PREFIX}{pid}[a-z0-9]*)[@:]", links, re.M):
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    if bridge:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    if run_dir is not None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            munged = int((run_dir / "munge" / "munged.pid").read_text().strip())
            # it writes its seed file as it exits: before the folder goes
            slurm_cluster.stop_pid(munged)
        shutil.rmtree(run_dir, ignore_errors=True)


def _remove_stale() -> None:
    """Clusters whose maker is gone (a test run killed before its clean-up)."""
    names = [p.name for p in NETNS_DIR.glob(f"{PREFIX}*")] if NETNS_DIR.is_dir() else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names += re.findall(rf"^\d+: ({PREFIX}\d+[a-z0-9-]*)[@:]", links, re.M)
    made = {int(m[1]) for n in names if (m := re.match(rf"{PREFIX}(\d+)", n))}
    runs = {int(p.name) for p in RUN_ROOT.glob("*") if p.name.isdigit()}
    for pid in made | runs:
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            ns = [n for n in names if n.startswith(f"{PREFIX}{pid}-")]
            _remove(pid, f"{PREFIX}{pid}br", ns, RUN_ROOT / str(pid))


def _start_munge(run_dir: Path) -> Path:
    """A munged of the cluster's own: its socket in `run_dir`, the machine's key."""
    folder = run_dir / "munge"
    folder.mkdir(parents=True)
    shutil.chown(folder, "munge", "munge")
    folder.chmod(0o700)
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
    socket = folder / "munge.sock"
    subprocess.run(
        [
            "runuser", "-u", "munge", "--", "munged", "--force",
            f"--socket={socket}", f"--pid-file={folder / 'munged.pid'}",
            f"--log-file={folder / 'munged.log'}", f"--seed-file={folder / 'seed'}",
        ],
        check=True,
        timeout=30,
    )  # fmt: skip
    slurm_cluster._read_pid(folder / "munged.pid", timeout=10)
    return socket


def start(root: Path, nodes: int = 2, cpus: int = 2, timeout: float = 60) -> Hosts:
    """`nodes` hosts named node1, node2, ... with `cpus` CPUs each, all idle on return."""
    slurm_cluster.install()
    if not all(shutil.which(t) for t in ("ip", "nsenter", "unshare")):
        apt_install(("iproute2", "util-linux"))
    _remove_stale()
    pid = os.getpid()
    run_dir = RUN_ROOT / str(pid)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o755)
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "log"):
        (root / d).mkdir(exist_ok=True)
    subnet = _free_subnet()
    addrs = list(subnet.hosts())
    bridge = f"{PREFIX}{pid}br"
    hosts = Hosts(root, root / "slurm.conf", [], bridge=bridge, controller_addr=str(addrs[0]))
    hosts.run_dir = run_dir
    try:
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{addrs[0]}/{subnet.prefixlen}", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for i in range(1, nodes + 1):
            name, peer = f"node{i}", f"{PREFIX}{pid}p{i}"
            node = Node(name, str(addrs[10 + i]), f"{PREFIX}{pid}-{name}", f"{PREFIX}{pid}h{i}")
            hosts.nodes.append(node)
            _run("ip", "netns", "add", node.netns)
            _run("ip", "link", "add", node.link, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", node.netns)
            inside = ["ip", "netns", "exec", node.netns, "ip"]
            _run(*inside, "link", "set", peer, "name", "eth0")
            _run(*inside, "addr", "add", f"{node.addr}/{subnet.prefixlen}", "dev", "eth0")
            _run(*inside, "link", "set", "eth0", "up")
            _run(*inside, "link", "set", "lo", "up")
            _run("ip", "link", "set", node.link, "master", bridge)
            _run("ip", "link", "set", node.link, "up")
        names = "".join(f"{n.addr} {n.name}\n" for n in hosts.nodes)
        for node in hosts.nodes:
            (run_dir / f"hosts-{node.name}").write_text(f"127.0.0.1 localhost\n{names}")
            (root / f"spool-{node.name}").mkdir(exist_ok=True)
        socket = _start_munge(run_dir)
        hosts.conf.write_text(_conf(root, hosts, socket, cpus))
        subprocess.run(["slurmctld", "-f", str(hosts.conf)], check=True, env=hosts.env, timeout=30)
        hosts.pids.append(slurm_cluster._read_pid(root / "slurmctld.pid", timeout=15))
        for node in hosts.nodes:
            hosts._start_slurmd(node)
        hosts.wait_for_nodes("idle", timeout=timeout)
    except BaseException:
        hosts.stop()
        raise
    return hosts


def _conf(root: Path, hosts: Hosts, socket: Path, cpus: int) -> str:
    node_lines = [
        f"NodeName={n.name} NodeAddr={n.addr} CPUs={cpus} RealMemory=8000 State=UNKNOWN"
        for n in hosts.nodes
    ]
    names = ",".join(n.name for n in hosts.nodes)
    return "\n".join(
        [
            "ClusterName=gandisthosts",
            # "localhost" is the name slurmctld accepts on any machine; the nodes reach it
            # at its address on the bridge
            f"SlurmctldHost=localhost({hosts.controller_addr})",
            f"SlurmctldPort={slurm_cluster._free_port()}",
            f"SlurmdPort={slurm_cluster._free_port()}",
            *slurm_cluster.common_conf(
                root, f"AuthInfo=socket={socket},cred_expire=10", node_files="-%n"
            ),
            # a node that stops answering is DOWN after this long, its job requeued or failed;
            # above the lost-host tests' launch.rank_timeout_s (15 s), so that the ranks give
            # up first and say so, rather than SLURM killing them (30 s made each wait longer)
            "SlurmdTimeout=25",
            *node_lines,
            f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )
