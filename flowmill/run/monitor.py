"""The thread that keeps a local run going and visible: every tick it lets the
supervisor notice and restart crashed children; every second it scrapes each child's
/metrics and /readyz and rebuilds the status the table shows."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from flowmill.run.stats import Rates, Sample, Scraper
from flowmill.run.status_table import RowStatus, RunStatus
from flowmill.run.supervisor import Child, Supervisor

log = logging.getLogger("flowmill.run")

TICK = 0.25
SCRAPE_EVERY = 1.0


class Monitor:
    """Watches one Supervisor's children; status() is safe to call from any thread."""

    def __init__(
        self,
        supervisor: Supervisor,
        header: Callable[[], RunStatus],
        status_file: Path | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.header = header
        """The status without rows: pipeline, URLs, log folder."""
        self.status_file = status_file
        """Where each snapshot is also written as JSON (the API's health view reads it)."""
        self._rates: dict[str, Rates] = {}
        self._rate_now: dict[str, tuple[float, float]] = {}
        self._samples: dict[str, Sample] = {}
        self._status: RunStatus | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowmill-run", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def status(self) -> RunStatus:
        """The newest snapshot (at most SCRAPE_EVERY seconds old)."""
        with self._lock:
            if self._status is not None and not self._stop.is_set():
                return self._status
        return self._build()

    def _run(self) -> None:
        scraper = Scraper()
        next_scrape = 0.0
        try:
            while not self._stop.is_set():
                self.supervisor.check()
                if time.monotonic() >= next_scrape:
                    next_scrape = time.monotonic() + SCRAPE_EVERY
                    self._scrape(scraper)
                    status = self._build()
                    with self._lock:
                        self._status = status
                    if self.status_file is not None:
                        try:
                            write_status_file(self.status_file, status)
                        except OSError as err:  # the run and its restarts go on regardless
                            log.warning("could not write %s: %s", self.status_file, err)
                self._stop.wait(TICK)
        except Exception:  # the run goes on without a table rather than dying silently
            log.exception("the status monitor failed")
        finally:
            scraper.close()

    def _scrape(self, scraper: Scraper) -> None:
        at = time.monotonic()
        for child in self.supervisor.children:
            label = child.spec.label
            if not child.alive:
                self._samples[label] = Sample()
                continue
            kind = child.spec.kind
            sample = scraper.api(child.port) if kind == "api" else scraper.worker(child.port)
            self._samples[label] = sample
            if sample.events_in is not None or sample.events_out is not None:
                rates = self._rates.setdefault(label, Rates())
                self._rate_now[label] = rates.add(
                    at, sample.events_in or 0.0, sample.events_out or 0.0
                )

    def _build(self) -> RunStatus:
        rows = [self._row(child) for child in self.supervisor.children]
        return dataclasses.replace(self.header(), rows=rows)

    def _row(self, child: Child) -> RowStatus:
        spec = child.spec
        sample = self._samples.get(spec.label, Sample())
        if child.paused and not child.alive:
            state = "paused"
        elif child.restart_at is not None:
            state = "restarting"
        elif not child.alive:
            if self.supervisor.stopping:
                state = "stopped"
            else:
                state = "exited" if child.proc is not None else "starting"
        elif sample.ready:
            # A source that read all of its input stays up; its /readyz says "finished".
            state = "done" if sample.detail.startswith("finished") else "ready"
        else:
            state = "starting"
        rate_in, rate_out = self._rate_now.get(spec.label, (None, None))
        return RowStatus(
            label=spec.label,
            kind=spec.kind,
            state=state,
            pid=child.pid,
            restarts=child.restarts,
            rate_in=rate_in,
            rate_out=rate_out,
            events_in=sample.events_in,
            events_out=sample.events_out,
            lag=sample.lag,
            dead=sample.failed,
            detail=sample.detail,
            log_path=str(child.log_path),
        )


def write_status_file(path: Path, status: RunStatus) -> None:
    """The snapshot as JSON with the time it was taken, replaced atomically so a reader
    never sees half a file. Only the user may read it: it names pids and log paths."""
    body = dataclasses.asdict(status) | {"updated_ms": int(time.time() * 1000)}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(body))
    os.replace(tmp, path)
