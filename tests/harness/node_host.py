"""What a node run changes on the host, and how it is put back.

The node (tests/harness/node.py) runs in a network namespace of its own, so its iptables
rules, bridge, routes and net.* sysctls vanish with the namespace. The rest is shared with
the host and has to be undone explicitly: processes (containerd's shims and the containers
outlive containerd), mounts (container root filesystems, projected volumes, pod network
namespaces, all under the run directory), cgroups (the kubelet's tree under one cgroup root
per run), kernel sysctls the kubelet sets on start-up, CNI result files and the kubelet's
/var/log/containers links.

Every run keeps a state file in its run directory, RUNS_ROOT/<netns>/, naming its owner
process. clean_run() undoes everything a run did, whether the run is being torn down or its
owner died (kill -9) and a later run finds its leftovers (clean_stale_runs()); leftovers()
lists what is still there, for the check that the host is as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RUNS_ROOT = Path("/tmp/flowmill-node")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
# The kubelet's container-log links; one file per container, named after the pod.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# Where libcni (inside containerd) caches ADD results, whatever the CNI config says.
CNI_CACHE = Path("/var/lib/cni")
# Host directories the node may create; removed again when they did not exist before.
# containerd puts its shims' sockets in /run/containerd/s whatever its state directory is.
HOST_DIRS = (
    CNI_CACHE,
    CONTAINER_LOG_LINKS,
    Path("/run/containerd"),
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
)
# The kernel tunables the kubelet sets at start-up (setupKernelTunables); not per namespace.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Shared by all runs: the values from before the first of several concurrent runs started.
SYSCTL_SNAPSHOT = RUNS_ROOT / "host-sysctls.json"
_MNT_DETACH = 2


@dataclass
class RunState:
    """What a run needs to know to undo itself; saved as <run dir>/state.json."""

    netns: str
    owner_pid: int
    absent_host_dirs: list[str] = field(default_factory=list)
    sysctls_before: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return RUNS_ROOT / self.netns

    @property
    def cgroup_name(self) -> str:
        """The kubelet's cgroup root, below which all pods' cgroups live."""
        return self.netns

    @property
    def cni_network(self) -> str:
        return self.netns

    def save(self) -> None:
        (self.run_dir / "state.json").write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, run_dir: Path) -> RunState | None:
        try:
            return cls(**json.loads((run_dir / "state.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None


# -- namespace -------------------------------------------------------------------------------


def current_netns_is(netns: str) -> bool:
    """Whether this process runs inside the named network namespace (`ip netns add` name)."""
    try:
        named = os.stat(NETNS_DIR / netns)
    except OSError:
        return False
    own = os.stat("/proc/self/ns/net")
    return (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def netns_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


# -- starting a run --------------------------------------------------------------------------


def begin_run(netns: str) -> RunState:
    """Clean up dead runs, then create this run's directory and state, and snapshot the
    kernel tunables the kubelet will change."""
    clean_stale_runs()
    state = RunState(
        netns=netns,
        owner_pid=os.getpid(),
        absent_host_dirs=[str(d) for d in HOST_DIRS if not d.exists()],
    )
    if state.run_dir.exists():
        raise RuntimeError(f"{state.run_dir} belongs to a live run; choose another namespace")
    state.run_dir.mkdir(parents=True)
    if not _live_runs(excluding=netns) or not SYSCTL_SNAPSHOT.exists():
        SYSCTL_SNAPSHOT.write_text(json.dumps(read_sysctls()))
    state.sysctls_before = json.loads(SYSCTL_SNAPSHOT.read_text())
    state.save()
    return state


def make_cgroup_root(state: RunState) -> None:
    """The kubelet requires its --cgroup-root to exist in every hierarchy."""
    for hierarchy in _hierarchies():
        (hierarchy / state.cgroup_name).mkdir(exist_ok=True)
    # A new cpuset cgroup starts with no CPUs and no memory nodes, and takes no tasks so.
    cpuset = CGROUP_ROOT / "cpuset"
    for knob in ("cpuset.cpus", "cpuset.mems"):
        mine = cpuset / state.cgroup_name / knob
        if mine.exists() and not mine.read_text().strip():
            mine.write_text((cpuset / knob).read_text())


# -- undoing a run ---------------------------------------------------------------------------


def clean_stale_runs() -> list[str]:
    """Undo the runs whose owner process is gone; returns their namespace names."""
    cleaned = []
    for run_dir in sorted(RUNS_ROOT.glob("*/")):
        state = RunState.load(run_dir)
        if state is None or _alive(state.owner_pid):
            continue
        clean_run(state)
        if netns_exists(state.netns):
            subprocess.run(["ip", "netns", "del", state.netns], check=False)
        cleaned.append(state.netns)
    return cleaned


def clean_run(state: RunState) -> None:
    """Kill what is left of the run, unmount, remove its cgroups, files and run directory,
    and restore the kernel tunables once no other run needs them. Idempotent.

    An orderly teardown (KubeNode.stop) has already removed the pods through the API and the
    CRI; this is what guarantees the host ends clean after a crash too.
    """
    _kill(_run_processes(state))
    _unmount_below(state.run_dir)
    _remove_cgroups(state.cgroup_name)
    _remove_cni_results(state.cni_network)
    _remove_log_links(state.run_dir)
    # Shared with concurrent runs (their shims' sockets, their CNI results): the last one out
    # removes them.
    if not _live_runs(excluding=state.netns):
        for d in state.absent_host_dirs:
            _remove_if_only_empty_dirs(Path(d))
        _restore_sysctls()
    shutil.rmtree(state.run_dir, ignore_errors=True)


def leftovers(state: RunState) -> list[str]:
    """What the run left on the host (empty when it is as it was). The namespace itself is
    checked by whoever deletes it (scripts/cluster.sh), since this process lives in it."""
    found = [f"process {pid}: {_cmdline(pid)}" for pid in _run_processes(state)]
    found += [f"mount {m}" for m in _mounts_below(state.run_dir)]
    found += [
        f"cgroup {h / state.cgroup_name}"
        for h in _hierarchies()
        if (h / state.cgroup_name).exists()
    ]
    found += [f"CNI result {p}" for p in _cni_results(state.cni_network)]
    found += [f"log link {p}" for p in _log_links(state.run_dir)]
    if state.run_dir.exists():
        found.append(f"run directory {state.run_dir}")
    if not _live_runs(excluding=state.netns):
        found += [f"directory {d}" for d in state.absent_host_dirs if Path(d).exists()]
        found += sysctl_changes(state.sysctls_before)
    return found


# -- pieces ----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent has not reaped it yet.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _live_runs(excluding: str) -> list[RunState]:
    states = (RunState.load(d) for d in RUNS_ROOT.glob("*/"))
    return [s for s in states if s and s.netns != excluding and _alive(s.owner_pid)]


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies: one per v1 controller set, and the unified one, where runc
    also creates each container's cgroup on hybrid hosts."""
    try:
        entries = sorted(CGROUP_ROOT.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.is_symlink()]


def _run_processes(state: RunState) -> list[int]:
    """Processes in the run's cgroups (containers) or naming its run directory (containerd,
    its shims, the kubelet, ...), except the run's owner and this process."""
    pids: set[int] = set()
    for hierarchy in _hierarchies():
        for procs in (hierarchy / state.cgroup_name).rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    marker = str(state.run_dir)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and marker in _cmdline(int(proc.name)):
            pids.add(int(proc.name))
    pids.discard(os.getpid())
    pids.discard(state.owner_pid)
    return sorted(p for p in pids if _alive(p))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _kill(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _mounts_below(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with spaces and the like octal-escaped.
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                mounts.append(point)
    return mounts


def _unmount_below(directory: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # Deepest first, and repeated: a mount point can be mounted over more than once.
    for _ in range(5):
        mounts = sorted(set(_mounts_below(directory)), key=lambda m: m.count("/"), reverse=True)
        if not mounts:
            return
        for point in mounts:
            libc.umount2(point.encode(), _MNT_DETACH)


def _remove_cgroups(name: str) -> None:
    for hierarchy in _hierarchies():
        top = hierarchy / name
        if not top.exists():
            continue
        # A cgroup directory is removed with rmdir once it has no children and no tasks.
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _cni_results(network: str) -> list[Path]:
    return sorted((CNI_CACHE / "results").glob(f"{network}-*"))


def _remove_cni_results(network: str) -> None:
    for path in _cni_results(network):
        path.unlink(missing_ok=True)


def _log_links(run_dir: Path) -> list[Path]:
    try:
        links = list(CONTAINER_LOG_LINKS.iterdir())
    except OSError:
        return []
    return [p for p in links if p.is_symlink() and str(run_dir) in os.readlink(p)]


def _remove_log_links(run_dir: Path) -> None:
    for link in _log_links(run_dir):
        link.unlink(missing_ok=True)


def _remove_if_only_empty_dirs(directory: Path) -> None:
    """Remove a directory the run created, unless something put regular files in it since
    (sockets of dead processes do not count)."""
    if not directory.is_dir() or any(
        p.is_symlink() or (p.is_file() and p.stat().st_size > 0) for p in directory.rglob("*")
    ):
        return
    shutil.rmtree(directory, ignore_errors=True)


def _read_sysctl(key: str) -> str:
    return (Path("/proc/sys") / key).read_text().strip()


def read_sysctls() -> dict[str, str]:
    """The current values of the kernel tunables the kubelet sets."""
    return {k: _read_sysctl(k) for k in KUBELET_SYSCTLS}


def _restore_sysctls() -> None:
    try:
        before = json.loads(SYSCTL_SNAPSHOT.read_text())
    except (OSError, ValueError):
        return
    for key, value in before.items():
        if _read_sysctl(key) != value:
            (Path("/proc/sys") / key).write_text(value)
    SYSCTL_SNAPSHOT.unlink(missing_ok=True)


def sysctl_changes(before: dict[str, str]) -> list[str]:
    """The kernel tunables whose value differs from `before`, described."""
    now = read_sysctls()
    return [f"sysctl {k}: {v} before, {now[k]} now" for k, v in before.items() if now.get(k) != v]
