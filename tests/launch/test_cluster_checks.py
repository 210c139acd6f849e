"""What `gan-dist launch --slurm --dry-run` tells a user to check on their cluster."""

from __future__ import annotations

from collections import namedtuple

import psutil
import pytest

from gan_dist.config.recipe import load_recipe
from gan_dist.launch import cluster_checks
from gan_dist.launch.cluster_checks import file_system, storage_line

Part = namedtuple("Part", "device mountpoint fstype opts")


def test_the_nearest_mount_decides_and_a_shared_one_is_said_to_be(tmp_path, monkeypatch):
    parts = [Part("/dev/vda", "/", "ext4", ""), Part("srv:/scratch", "/scratch", "nfs4", "")]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=True: parts)
    assert file_system(tmp_path) == "ext4"
    assert file_system(tmp_path.parent / "scratch-not") == "ext4"  # a prefix is not a mount
    shared = storage_line("run dir", "/scratch/me/runs/q/not-made-yet", made_by_the_job=True)
    assert shared == (
        "run dir /scratch/me/runs/q/not-made-yet: on nfs4, a shared file system: every node "
        "must mount it here too"
    )
    (tmp_path / "shards").mkdir()
    for i in range(2):
        (tmp_path / "shards" / f"train-{i:06d}.tar").write_bytes(b"")
    local = storage_line("data.train", f"{tmp_path}/shards/train-{{000000..000001}}.tar")
    assert "on ext4, local to this machine as far as it shows" in local


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("/nowhere/shards", "no such folder of packed shards"),
        ("gone/{a,b}.tar", "2 of the 2 shards it names do not exist (first: gone/a.tar)"),
        # the pattern's folder is here, its shards are not (hostile pass)
        ("shards/train-{000000..000003}.tar", "4 of the 4 shards it names do not exist"),
        ("train-{0..1}.tar", "2 of the 2 shards it names do not exist"),
        ("file:///nowhere/x.tar", "no such shard file"),
    ],
)
def test_data_that_is_not_here_is_said_to_be_missing_not_given_a_file_system(
    tmp_path, monkeypatch, where, why
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").mkdir()
    line = storage_line("data.train", where)
    assert line.startswith(f"data.train {where}: not found on this machine: "), line
    assert why in line and line.endswith(
        "every node must see it at this same path when the job runs"
    )


def test_a_file_url_is_a_path_on_this_machine(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"")
    assert "local to this machine" in storage_line("data.train", f"file://{tmp_path}/x.tar")


def test_urls_and_commands_are_not_paths():
    assert "read over the network by every node" in storage_line("data.train", "s3://b/x.tar")
    assert "a command every node runs" in storage_line("data.train", "pipe:cat x.tar")


def test_one_node_needs_no_network_line_and_the_set_interface_is_shown(tmp_path, monkeypatch):
    one = cluster_checks.cluster_checks(load_recipe("quickstart", []), tmp_path)
    assert not [line for line in one if line.startswith(("network", "port"))]
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    two = load_recipe("quickstart", ["launch.nodes=2", "launch.main_port=29555"])
    lines = cluster_checks.cluster_checks(two, tmp_path)
    assert "network: GLOO_SOCKET_IFNAME=eth1 in this shell; sbatch passes it on" in lines
    assert any(line.startswith("port: rank 0 listens on launch.main_port 29555") for line in lines)


def test_the_port_picker_refuses_what_is_not_a_port(capsys):
    """The script's port helper: a bad argument is a usage line and exit 2, no traceback."""
    from gan_dist.launch.port import main

    for argv in ([], ["abc"], ["70000"], ["-5"], ["1023"], ["2000", "3000"]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.startswith("usage: python -m gan_dist.launch.port")
    assert main(["--fixed", "29555"]) in (0, 1)


def test_an_interface_variable_that_names_no_interface_is_said(tmp_path, monkeypatch):
    """Hostile pass: 'eth0; rm -rf /', a newline, or "" were echoed as if fine."""
    two = load_recipe("quickstart", ["launch.nodes=2"])
    for value in ("eth0; rm -rf /", "eth0\nFAKE LINE", "", "x" * 5000):
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", value)
        (line,) = [n for n in cluster_checks.cluster_checks(two, tmp_path) if "network" in n]
        assert "is not a list of interface names" in line and "\n" not in line, value
        assert len(line) < 300
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0,^docker0")
    (line,) = [n for n in cluster_checks.cluster_checks(two, tmp_path) if "network" in n]
    assert line.startswith("network: GLOO_SOCKET_IFNAME=eth0,^docker0 in this shell")


def test_the_last_ports_are_said_as_tried(monkeypatch):
    from gan_dist.launch import port

    monkeypatch.setattr(port, "is_free", lambda p: False)
    with pytest.raises(ValueError, match=r"^port 65535 is in use on "):
        port.pick(65535, fixed=False)
    with pytest.raises(ValueError, match=r"^ports 65530-65535 are all in use on "):
        port.pick(65530, fixed=False)
