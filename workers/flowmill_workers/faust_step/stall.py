"""The Faust step's stall watch: a worker that is ready, has input waiting and neither
takes in nor commits any of it for the step's faust.stallTimeout exits (EXIT_STALLED), so
that Kubernetes or `flowmill run` restarts it.

Why: a Faust worker killed before its first offset commit was restarted, rejoined, restored
its Table, said "Worker ready", and then consumed nothing for good (docs/faust.md, the
kill case): its probes answered, so nothing restarted it. The cause lies inside Faust's
recovery; a fresh process does not have it, and Faust processes at least once, so a
restart loses nothing.

What counts as progress: an event taken in (the monitor's count) or a committed offset
moving. A slow agent still commits every commit interval; a blocked one (or one stuck on
a single event longer than the timeout) takes in nothing and commits nothing, and is
restarted too, which is why the timeout must be above the slowest event.

Fed by the lag thread (lag.py) after each refresh, so it sees the same committed offsets
the autoscaler does, and runs whatever the event loop does.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

from flowmill.spec.launch import EXIT_STALLED

log = logging.getLogger(__name__)


class StallWatch:
    """Decides from successive observations whether the worker stalled; calls `on_stall`
    (by default: log and exit) once it has, with the reason."""

    def __init__(
        self,
        timeout_s: float,
        ready: Callable[[], bool],
        taken_in: Callable[[], float],
        on_stall: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.ready = ready
        self.taken_in = taken_in
        self.on_stall = on_stall or exit_stalled
        self.clock = clock
        self._since: float | None = None
        self._last: tuple[float, tuple[tuple[int, int], ...]] | None = None

    def observe(self, lags: Mapping[int, int], committed: Mapping[int, int]) -> None:
        """One refresh: each owned partition's lag and committed (or starting) offset."""
        now = self.clock()
        waiting = sum(lags.values())
        try:
            ready = self.ready()
        except Exception:  # the loop changed Faust's state under us: not a stall
            ready = False
        if not ready or waiting <= 0:
            self._since = self._last = None
            return
        progress = (self.taken_in(), tuple(sorted(committed.items())))
        if progress != self._last:
            self._since, self._last = now, progress
            return
        assert self._since is not None
        if now - self._since >= self.timeout_s:
            behind = ", ".join(f"partition {p}: {n}" for p, n in sorted(lags.items()) if n)
            self.on_stall(
                f"ready with {waiting} input event(s) waiting ({behind}) and "
                f"nothing taken in or committed for {now - self._since:.0f}s "
                f"(faust.stallTimeout {self.timeout_s:g}s)"
            )
            self._since = now  # a test's on_stall returns: report again after a timeout


def exit_stalled(why: str) -> None:
    log.error("Faust step stalled: %s; exiting with code %d to be restarted", why, EXIT_STALLED)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    # Not sys.exit: this runs on the lag thread, and the loop may be what is stuck.
    os._exit(EXIT_STALLED)
