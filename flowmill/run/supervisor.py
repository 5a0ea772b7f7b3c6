"""Child processes of a local run: start them, restart the ones that crash (with
back-off), and stop them all without leaving any behind.

Each child gets its own session, hence its own process group: Ctrl-C in a terminal then
reaches only `flowmill run`, which stops the children in order instead of them all
dying at once mid-batch, and a signal sent to a child's group also reaches anything the
child started. On Linux each child also gets PR_SET_PDEATHSIG, so that if `flowmill run`
itself is killed (SIGKILL, OOM) the kernel sends the children SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from flowmill.local.ports import die_with_parent, tail
from flowmill.redact import redact_text
from flowmill.run.plan import ChildSpec, Connections

LOG_MODE = 0o600
"""Child logs are the user's alone: a library may print what the redaction misses."""
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0
"""A child that ran this long before exiting counts as healthy: its next restart is quick."""


def backoff(failures_in_row: int) -> float:
    """Seconds before restart number `failures_in_row` (1, 2, 4, ... capped)."""
    return min(MAX_BACKOFF, 2.0 ** max(0, failures_in_row - 1))


@dataclass
class Child:
    """One supervised process and its history."""

    spec: ChildSpec
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_row: int = 0
    restart_at: float | None = None
    last_exit: int | None = None
    history: list[int] = field(default_factory=list)
    """pids of every process started for this child, newest last."""
    paused: bool = False
    """Stopped on purpose (flowmill pause, a replay): not started or restarted until
    resumed."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts children, restarts crashed ones, stops them all.

    Not thread-safe by itself: LocalRun calls it from its monitor thread and, for
    stopping, after that thread has ended.
    """

    def __init__(
        self,
        manifest: Path,
        workdir: Path,
        conn: Connections,
        log_dir: Path,
        notify: Callable[[str], None],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.manifest = manifest
        self.workdir = workdir
        self.conn = conn
        self.log_dir = log_dir
        self.notify = notify
        self.env = dict(os.environ if env is None else env)
        # Logs should reach the file as they are written, not when a buffer fills.
        self.env["PYTHONUNBUFFERED"] = "1"
        self.children: list[Child] = []
        self.stopping = False
        self._lock = threading.Lock()

    def add(self, spec: ChildSpec, port: int) -> Child:
        child = Child(spec, port, self.log_dir / spec.log_name)
        self.children.append(child)
        return child

    def start_all(self) -> None:
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for child in self.children:
            if not child.paused:
                self._spawn(child)

    def pause(self, children: list[Child], grace: float = 10.0) -> None:
        """Stop these children as stop_all does (their positions are durable) and keep
        them stopped until resume()."""
        with self._lock:
            for child in children:
                child.paused = True
                child.restart_at = None
        self._stop(children, grace)
        for child in children:
            child.last_exit = None  # stopped on purpose, not an exit to report

    def resume(self, children: list[Child]) -> None:
        """Start paused children again (from the thread that runs check(), or another
        that lives until every child stopped: see _spawn)."""
        for child in children:
            with self._lock:
                child.paused = False
                child.restart_at = None
            if not child.alive:
                self._spawn(child)

    def _spawn(self, child: Child) -> None:
        with self._lock:
            if self.stopping:
                return
            argv = child.spec.argv(self.manifest, self.conn, child.port)
            with _open_log(child.log_path) as log:
                command = redact_text(" ".join(argv))
                log.write(f"--- {time.strftime('%H:%M:%S')} {command}\n".encode())
                log.flush()
                child.proc = subprocess.Popen(
                    argv,
                    cwd=self.workdir,
                    env=self.env | child.spec.env(self.conn),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # The supervisor forks only from threads that live until every child stopped.
                    preexec_fn=die_with_parent(os.getpid()),
                )
            child.history.append(child.proc.pid)
            child.started_at = time.monotonic()
            child.restart_at = None

    def check(self) -> None:
        """Notice children that exited and restart those whose back-off is over."""
        now = time.monotonic()
        for child in self.children:
            if self.stopping:
                return
            if child.paused:
                continue
            proc = child.proc
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                    self.notify(f"restarted {child.spec.label} (restart #{child.restarts})")
                continue
            if proc is None or proc.poll() is None:
                continue
            child.last_exit = proc.returncode
            ran = now - child.started_at
            child.failures_in_row = 1 if ran >= STABLE_AFTER else child.failures_in_row + 1
            delay = backoff(child.failures_in_row)
            child.restart_at = now + delay
            last_lines = tail(child.log_path, 3).replace("\n", "\n    ")
            self.notify(
                f"{child.spec.label} exited with code {proc.returncode} after {ran:.1f}s; "
                f"restarting in {delay:.0f}s (log: {child.log_path})\n    {last_lines}"
            )

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop the sources and steps, then the API: each in turn gets SIGTERM to its
        process group, up to `grace` seconds, then SIGKILL; returns once every child has
        been reaped. Workers first, since they still write; the API answers meanwhile."""
        with self._lock:
            self.stopping = True
        workers = [c for c in self.children if c.spec.kind != "api"]
        self._stop(workers, grace)
        self._stop([c for c in self.children if c.spec.kind == "api"], grace)

    def _stop(self, children: list[Child], grace: float) -> None:
        live = [c for c in children if c.alive]
        for child in live:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in live:
            assert child.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
        stragglers = [c for c in live if c.alive]
        for child in stragglers:
            self.notify(f"{child.spec.label} did not stop within {grace:.0f}s; killing it")
            _signal_group(child, signal.SIGKILL)
        for child in stragglers:
            assert child.proc is not None
            child.proc.wait(10)

    def kill_all(self) -> None:
        """SIGKILL every child now (a second Ctrl-C while stopping)."""
        with self._lock:
            self.stopping = True
        for child in self.children:
            if child.alive:
                _signal_group(child, signal.SIGKILL)

    def pids(self) -> list[int]:
        return [c.pid for c in self.children if c.alive and c.pid is not None]


def _open_log(path: Path) -> BinaryIO:
    """Append to a child's log, created (or, left by an older run, made) LOG_MODE."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
    os.fchmod(fd, LOG_MODE)
    return os.fdopen(fd, "ab")


def _signal_group(child: Child, sig: signal.Signals) -> None:
    # Only while the leader is unreaped: its pid (and so the group id) cannot be reused.
    if child.proc is None or child.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.proc.pid, sig)
