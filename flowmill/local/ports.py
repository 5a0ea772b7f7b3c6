"""Free TCP ports on the loopback interface, and the child processes of the servers started
on them (see spawn())."""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"


_CHOSEN_PORTS = (20000, 30000)
"""Ports are chosen from here, below the kernel's ephemeral range, so that no outgoing
connection can take one as its source port between the choice and the bind (from the
ephemeral range, one did: a restarted worker failed to bind its metrics port), and below
Kubernetes' NodePort range (30000-32767), which the node's kube-proxy rewrites."""


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago.

    All sockets are held open until every port is chosen, so no port is handed out twice.
    The ports come from below the ephemeral range (see _CHOSEN_PORTS) at random, so the
    only other takers are listeners, which the probe bind sees. The ports are free again on
    return, so another process choosing the same way could still take one before the caller
    binds it; callers that choose ports themselves retry on a bind failure.
    """
    low, high = _CHOSEN_PORTS[0], min(_CHOSEN_PORTS[1], _ephemeral_low())
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            ports.append(_bind_one(sock, low, high))
        return ports


def _bind_one(sock: socket.socket, low: int, high: int) -> int:
    if high - low >= 1000:
        for _ in range(200):
            port = random.randrange(low, high)
            try:
                # A wildcard bind also collides with listeners on any address.
                sock.bind(("", port))
            except OSError:
                continue
            return port
    sock.bind((LOOPBACK, 0))  # a range too narrow or too full: the kernel's choice
    return int(sock.getsockname()[1])


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# Child processes of local servers. They live here, next to the ports they listen on, so that
# kafka.py and redis.py share one way of starting, stopping and reaping servers.

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


# Resolved once, before any fork: the child must not load libraries between fork and exec.
_prctl = _load_prctl()


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when the forking thread exits
    (Linux only; None elsewhere). Fork only from threads that outlive their children."""
    if _prctl is None:
        return None
    prctl = _prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process whose stdout and stderr go to log_path (with `env` as its
    whole environment when given, else this process's).

    The server gets its own session so that Ctrl-C in a terminal reaches only Python, which
    then stops servers in order. So that no server outlives Python, it is stopped at exit
    (atexit) and, on Linux, also when Python dies without running atexit (SIGKILL,
    os._exit from pytest-timeout): the kernel sends it SIGTERM when the thread that started
    it exits. That is only armed when started from the main thread, since a worker thread
    may end long before Python does.
    """
    preexec = None
    if threading.current_thread() is threading.main_thread():
        preexec = die_with_parent(os.getpid())
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            # preexec_fn is unsafe with threads only if it takes locks; this one calls two syscalls.
            preexec_fn=preexec,
        )
    with _live_lock:
        _live.add(proc)
    return proc


def terminate(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `grace` seconds."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    finally:
        with _live_lock:
            _live.discard(proc)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages ("" when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        terminate(proc, grace=5.0)


class StartStop:
    """`with` support for anything that has start() and stop(): servers, runs, control
    planes; stop() runs even when the block raises."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
