"""What the status table shows, read from each child the way Prometheus would: its
/metrics and /readyz endpoints. Nothing here reaches into a worker's memory, so the table
shows exactly what a cluster's dashboards would."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from flowmill.local.ports import LOOPBACK

RATE_WINDOW = 5.0
"""Seconds of samples a rate is averaged over: steady enough to read, quick to react."""
_COUNTERS = {
    "flowmill_events_in": "events_in",
    "flowmill_events_out": "events_out",
    "flowmill_events_failed": "failed",
    "flowmill_events_late": "late",
}


@dataclass
class Sample:
    """One scrape of one child; None where the child did not answer."""

    ready: bool | None = None
    detail: str = ""
    events_in: float | None = None
    events_out: float | None = None
    failed: float | None = None
    late: float | None = None
    lag: float | None = None


def parse_metrics(text: str) -> Sample:
    """The counters and the summed consumer lag of a worker's /metrics page."""
    sample = Sample()
    for family in text_string_to_metric_families(text):
        attr = _COUNTERS.get(family.name)
        if attr is not None:
            total = sum(s.value for s in family.samples if s.name.endswith("_total"))
            setattr(sample, attr, total)
        elif family.name == "flowmill_consumer_lag":
            sample.lag = sum(s.value for s in family.samples)
    return sample


@dataclass
class Rates:
    """Events per second over the last RATE_WINDOW seconds of samples."""

    history: deque[tuple[float, float, float]] = field(default_factory=deque)

    def add(self, at: float, events_in: float, events_out: float) -> tuple[float, float]:
        if self.history and (events_in < self.history[-1][1] or events_out < self.history[-1][2]):
            # A restarted worker counts from zero again: start over rather than show a
            # negative (or diluted) rate.
            self.history.clear()
        self.history.append((at, events_in, events_out))
        while len(self.history) > 2 and at - self.history[0][0] > RATE_WINDOW:
            self.history.popleft()
        first = self.history[0]
        span = at - first[0]
        if span <= 0:
            return 0.0, 0.0
        return max(0.0, (events_in - first[1]) / span), max(0.0, (events_out - first[2]) / span)


class Scraper:
    """Scrapes children over loopback HTTP with short timeouts, so one stuck child only
    delays the table by a fraction of a second."""

    def __init__(self, timeout: float = 0.5) -> None:
        self.client = httpx.Client(timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.client.close()

    def worker(self, port: int) -> Sample:
        try:
            metrics = self.client.get(f"http://{LOOPBACK}:{port}/metrics")
            sample = parse_metrics(metrics.text) if metrics.status_code == 200 else Sample()
        except (httpx.HTTPError, ValueError):
            return Sample()
        sample.ready, sample.detail = self._ready(port)
        return sample

    def api(self, port: int) -> Sample:
        ready, detail = self._ready(port)
        return Sample(ready=ready, detail=detail)

    def _ready(self, port: int) -> tuple[bool | None, str]:
        try:
            response = self.client.get(f"http://{LOOPBACK}:{port}/readyz")
        except httpx.HTTPError:
            return None, ""
        detail = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                detail = str(body.get("detail") or body.get("status") or "")
        except ValueError:
            pass
        return response.status_code == 200, detail
