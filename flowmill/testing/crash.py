"""Crash injection for `flowmill test --crash random`: SIGKILL of sources and steps at
seeded random moments while the fixtures flow; the run's supervisor restarts them, and
the test expects the same results as without crashes.

The plan (when, whom) is drawn from the seed and the test's name before the test starts,
and printed, so a failing plan is rerun with the same --seed. Faust steps are never
killed: Faust processes at least once (docs/faust.md), so a kill may repeat its outputs,
which is no failure of the pipeline but would fail an exact expectation.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flowmill.run.supervisor import Supervisor
from flowmill.spec import Pipeline
from flowmill.testing.plan import CRASH_FEED_SECONDS

DEFAULT_KILLS = 3
EARLIEST_S = 0.5


@dataclass(frozen=True)
class Kill:
    at: float
    """Seconds after every worker of the test was first ready, so kills land while the
    paced fixtures flow rather than while the workers import."""
    label: str
    """source/<name> or step/<name>, as flowmill run's status table names children."""


def killable(pipeline: Pipeline) -> list[str]:
    """The children a crash may hit: every source and every built-in step."""
    labels = [f"source/{s.name}" for s in pipeline.spec.sources]
    return labels + [f"step/{s.name}" for s in pipeline.spec.steps if s.faust is None]


def crash_plan(seed: int, case_name: str, labels: list[str], kills: int) -> list[Kill]:
    """`kills` kills at moments within the paced feed, each of a child drawn at random."""
    rng = random.Random(f"{seed}:{case_name}")
    if not labels:
        return []
    moments = sorted(rng.uniform(EARLIEST_S, CRASH_FEED_SECONDS) for _ in range(kills))
    return [Kill(round(at, 2), rng.choice(labels)) for at in moments]


class Crasher:
    """Carries out a plan on a running supervisor from its own thread."""

    def __init__(
        self, supervisor: Supervisor, plan: list[Kill], report: Callable[[str], None]
    ) -> None:
        self.supervisor = supervisor
        self.plan = plan
        self.report = report
        self.done: list[str] = []
        self.started: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowmill-test-crash", daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)

    def finished(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def _run(self) -> None:
        for kill in self.plan:
            assert self.started is not None
            delay = kill.at - (time.monotonic() - self.started)
            if delay > 0 and self._stop.wait(delay):
                return
            self.report(self._kill(kill))

    def _kill(self, kill: Kill) -> str:
        child = next(c for c in self.supervisor.children if c.spec.label == kill.label)
        proc = child.proc
        if proc is None or proc.poll() is not None:
            line = f"{kill.at:5.2f}s  {kill.label} not running (restarting): not killed"
        else:
            # The child's own process group (the supervisor starts each in a new session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            line = f"{kill.at:5.2f}s  killed {kill.label} (pid {proc.pid})"
        self.done.append(line)
        return line
