"""Prometheus metrics of the API, labelled by route template (never by raw path, so a
scan of random URLs cannot blow up the series count) and status."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


REQUESTS = ("flowmill_api_requests", "HTTP requests by method, route template and status.")
LATENCY = (
    "flowmill_api_request_duration_seconds",
    "Time to the end of the response, by method, route template and status "
    "(live streams count their whole life).",
)
LABELS = ["method", "route", "status"]
_LE = [*(floatToGoString(b) for b in BUCKETS), "+Inf"]
_SUM = len(BUCKETS) + 1
"""Index of a series' sum in its list, after one count per bucket (the last is +Inf)."""


class RequestCollector(Collector):
    """flowmill_api_requests and flowmill_api_request_duration_seconds, counted in plain
    lists and folded into the exposition when scraped: prometheus_client's Counter and
    Histogram take a lock per inc/observe, which was about a quarter of a cache hit's
    own time. The exposition is what those two would give (names, help, types, labels,
    buckets, _created), as tests/api/test_metrics.py checks against them.

    Plain increments are safe here because only one thread touches the lists: observe()
    runs on the event loop's thread (MetricsMiddleware and the fast path, both awaited
    there; sync routes run in a thread pool, but the middleware's own code does not),
    and so does collect() (the /metrics route is async). A call from another thread
    would need a lock again."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], list[float]] = {}
        """(method, route, status) -> per-bucket counts (not cumulative; the last is
        +Inf), then the sum of the seconds observed."""
        self.created: dict[tuple[str, str, int], float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, status)
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (_SUM + 1)
            self.created[labels] = time.time()
        # bisect_left: the first bucket whose bound is >= seconds, as Histogram's `<=`.
        series[bisect_left(BUCKETS, seconds)] += 1
        series[_SUM] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=LABELS)
        latency = HistogramMetricFamily(*LATENCY, labels=LABELS)
        # As the client's own metrics: no _created once disable_created_metrics() (or
        # PROMETHEUS_DISABLE_CREATED_SERIES) switched them off.
        use_created = getattr(client_metrics, "_use_created", True)
        for (method, route, code), series in list(self.series.items()):
            labels = [method, route, str(code)]
            created = self.created[(method, route, code)] if use_created else None
            buckets: list[tuple[str, float]] = []
            total = 0.0
            for le, count in zip(_LE, series[:_SUM], strict=True):
                total += count
                buckets.append((le, total))
            requests.add_metric(labels, total, created=created)
            latency.add_metric(labels, buckets, series[_SUM])
            if created is not None:  # HistogramMetricFamily takes none; Histogram has it
                latency.samples.append(
                    Sample(f"{LATENCY[0]}_created", dict(zip(LABELS, labels, strict=True)), created)
                )
        yield requests
        yield latency


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestCollector()
        self.registry.register(self.requests)
        self.live_streams = Gauge(
            "flowmill_api_live_streams",
            "Open live-update streams by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "flowmill_api_redis_unavailable",
            "Requests answered 503 because Redis was unreachable.",
            registry=self.registry,
        )
        self.observe = self.requests.observe
        """Count one request (the collector's own method: no call in between)."""


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so it adds microseconds, not a task per
    request."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if status == 503:
                self.metrics.redis_errors.inc()
            self.metrics.observe(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )
