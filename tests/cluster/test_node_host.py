"""The node harness refuses the host's network namespace, and cleans up after a run that
was killed (kill -9) before it could tear down: its processes, mounts, cgroups and files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import node_host
from tests.harness.node import KubeNode, NodeError


def test_the_node_refuses_to_start_outside_its_namespace() -> None:
    with pytest.raises(NodeError, match=r"scripts/cluster\.sh test"):
        KubeNode(netns="flowmill-no-such-namespace").start()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_runs_leftovers_are_removed() -> None:
    state = node_host.RunState(
        netns=f"flowmill-stale-{os.getpid()}",
        owner_pid=_dead_pid(),
        absent_host_dirs=[],
        sysctls_before=node_host.read_sysctls(),
    )
    state.run_dir.mkdir(parents=True)
    state.save()
    node_host.make_cgroup_root(state)
    # What a killed run leaves: a container process in its cgroups, a shim naming the run
    # directory, and mounts below it (a container's rootfs, mounted over twice).
    in_cgroup = subprocess.Popen(["sleep", "600"])
    pids_cgroup = node_host.CGROUP_ROOT / "pids" / state.cgroup_name / "pod" / "cgroup.procs"
    pids_cgroup.parent.mkdir()
    pids_cgroup.write_text(str(in_cgroup.pid))
    shim = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", str(state.run_dir / "shim")]
    )
    mount_point = state.run_dir / "rootfs"
    mount_point.mkdir()
    for _ in range(2):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)], check=True)
    try:
        found = node_host.leftovers(state)
        assert any(f"process {in_cgroup.pid}" in f for f in found)
        assert any(f"process {shim.pid}" in f for f in found)
        assert any(f.startswith("mount ") for f in found)
        assert any(f.startswith("cgroup ") for f in found)

        assert state.netns in node_host.clean_stale_runs()

        assert node_host.leftovers(state) == []
        assert in_cgroup.wait(10) == -9 and shim.wait(10) == -9
        assert not Path(state.run_dir).exists()
    finally:
        for proc in (in_cgroup, shim):
            proc.kill()
            proc.wait()
        node_host.clean_run(state)
