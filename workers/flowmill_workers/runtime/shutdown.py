"""A bounded stop: once SIGTERM (or SIGINT) arrives, the worker has `grace` seconds to
finish its batch, flush and close its clients; then it exits anyway, saying what was not
made durable.

Why a deadline is needed: with the broker or Redis down, every last step of a clean stop
(a transaction's commit, leaving the consumer group, a Redis write that retries) waits
for a server that may never answer, and aiokafka's stop() retries its reconnects for
ever. Kubernetes would SIGKILL the pod after terminationGracePeriodSeconds, `flowmill
run` after its own grace, and a process started by hand would hang.

Why abandoning is safe: nothing not yet durable has moved the step's position (the Redis
checkpoint, the committed offsets inside the Kafka transaction, the Parquet file's
commit) or a source's position (the last committed transaction), so a restart reads
it again; an open Kafka transaction is aborted by the coordinator, or fenced by the
restart with the same transactional id.

The deadline runs on a thread so that it fires even while the event loop is blocked.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from flowmill.spec.launch import EXIT_UNCLOSED, EXIT_UNFLUSHED

log = logging.getLogger("flowmill.worker")

__all__ = ["EXIT_UNCLOSED", "EXIT_UNFLUSHED", "StopDeadline", "StopState"]


class StopState:
    """What a stopping worker is doing and what it still holds; read by the deadline's
    thread, written by the loop (plain attribute reads and writes)."""

    def __init__(self) -> None:
        self.phase = "running"
        self.unflushed: Callable[[], list[str]] = list
        """Describes work not yet durable, one item per batch or buffer; empty: none."""


class StopDeadline:
    """Started when the stop is requested; exits the process if `grace` passes first."""

    def __init__(self, what: str, grace: float, state: StopState) -> None:
        self.what = what
        self.grace = grace
        self.state = state
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="stop-deadline", daemon=True)
            self._thread.start()

    def finished(self) -> None:
        """The stop completed in time."""
        self._done.set()

    def expire_now(self) -> None:
        """A second signal: do not wait for the rest of the grace."""
        self._expire("a second stop signal")

    def _watch(self) -> None:
        if not self._done.wait(self.grace):
            self._expire(f"{self.grace:g}s")

    def _expire(self, after: str) -> None:
        if self._done.is_set():
            return
        try:
            pending = self.state.unflushed()
        except Exception as err:  # the loop changed it under us; say so rather than hang
            pending = [f"(could not tell: {err!r})"]
        if pending:
            code = EXIT_UNFLUSHED
            outcome = (
                "not durable, read again from the last durable position on restart: "
                + "; ".join(pending)
            )
        else:
            code = EXIT_UNCLOSED
            outcome = "every batch was durable"
        log.error(
            "%s did not stop within %s (stuck %s); %s; exiting with code %d",
            self.what,
            after,
            self.state.phase,
            outcome,
            code,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        # Not sys.exit: the loop (or its clients' stop) is what hangs, and atexit or
        # asyncio's shutdown would wait for it again.
        os._exit(code)
