"""What `gan-dist launch --slurm --dry-run` tells a user to check on their cluster."""

from __future__ import annotations

from collections import namedtuple

import psutil

from gan_dist.config.recipe import load_recipe
from gan_dist.launch import cluster_checks
from gan_dist.launch.cluster_checks import file_system, storage_line

Part = namedtuple("Part", "device mountpoint fstype opts")


def test_the_nearest_mount_decides_and_a_shared_one_is_said_to_be(tmp_path, monkeypatch):
    parts = [Part("/dev/vda", "/", "ext4", ""), Part("srv:/scratch", "/scratch", "nfs4", "")]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=True: parts)
    assert file_system(tmp_path) == "ext4"
    assert file_system(tmp_path.parent / "scratch-not") == "ext4"  # a prefix is not a mount
    shared = storage_line("run dir", "/scratch/me/runs/q/not-made-yet")
    assert shared == (
        "run dir /scratch/me/runs/q/not-made-yet: on nfs4, a shared file system: every node "
        "must mount it here too"
    )
    local = storage_line("data.train", "/data/shards/train-{000000..000031}.tar")
    assert "on ext4, local to this machine as far as it shows" in local


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
