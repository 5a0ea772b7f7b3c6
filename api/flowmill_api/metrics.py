"""Prometheus metrics of the API, labelled by route template (never by raw path, so a
scan of random URLs cannot blow up the series count) and status."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flowmill_api_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flowmill_api_request_duration_seconds",
            "Time to the end of the response, by method, route template and status "
            "(live streams count their whole life).",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
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
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        children = self._children.get(labels)
        if children is None:
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[labels] = children
        children[0].inc()
        children[1].observe(seconds)


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
