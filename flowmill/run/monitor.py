"""The thread that keeps a local run going and visible: every tick it lets the
supervisor notice and restart crashed children; every second it scrapes each child's
/metrics and /readyz and rebuilds the status the table shows."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from flowmill.run.stats import Rates, Sample, Scraper
from flowmill.run.status_table import RowStatus, RunStatus
from flowmill.run.supervisor import Child, Supervisor

log = logging.getLogger("flowmill.run")

TICK = 0.25
SCRAPE_EVERY = 1.0


class Monitor:
    """Watches one Supervisor's children; status() is safe to call from any thread."""

    def __init__(self, supervisor: Supervisor, header: Callable[[], RunStatus]) -> None:
        self.supervisor = supervisor
        self.header = header
        """The status without rows: pipeline, URLs, log folder."""
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
        if child.restart_at is not None:
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
