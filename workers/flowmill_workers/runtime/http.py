"""The worker's small HTTP side: /metrics for Prometheus, /healthz and /readyz for the
kubelet's probes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flowmill.spec.launch import POD_LISTEN_ADDRESS
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.runtime.shutdown import StopState


class Worker(Protocol):
    """What a source runner and a step runner have in common."""

    # Read-only: a wrapper (kafka_admission) passes its worker's on.
    @property
    def metrics(self) -> WorkerMetrics: ...
    @property
    def stop_state(self) -> StopState: ...

    def ready(self) -> tuple[bool, str]: ...
    async def start(self) -> None: ...
    async def run(self, stop: asyncio.Event) -> None: ...
    async def stop(self) -> None: ...


async def serve_worker(worker: Worker, stop: asyncio.Event, metrics_port: int | None) -> None:
    """Run a source or step until `stop`, with /metrics, /healthz and /readyz on
    `metrics_port` when one is given (0 picks a free port); the probes answer while the
    worker is still starting, so the kubelet sees it as alive but not ready."""
    http: WorkerHttp | None = None
    if metrics_port is not None:
        http = WorkerHttp(worker.metrics.registry, worker.ready)
        await http.start(metrics_port)
    try:
        # A start waiting for a broker that is down would not see `stop`.
        if await _unless_stopped(worker.start(), stop):
            await worker.run(stop)
    finally:
        await worker.stop()
        if http is not None:
            await http.stop()


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it); whether it completed."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


LOOP_BLOCKED_S = 15.0
"""/healthz fails once the event loop has not run for this long: the kubelet restarts a
worker whose loop hangs (its liveness probe: 3 failures 10 s apart), not one whose batch
is only slow on a throttled CPU."""
BEAT_S = 1.0


class WorkerHttp:
    """Serves metrics and probes from a thread of its own; `ready` is asked at every
    /readyz.

    Why a thread: served on the event loop, a probe waits for the batch being computed,
    which at a small CPU limit (100m: a batch of thousands of events) takes seconds of
    wall time, against the probes' 2 s timeout; in a CI run a worker at 100m working
    through a burst went unready, and so would a liveness probe fail. Here the probes
    answer whatever the loop does, and /healthz says whether the loop still runs (a beat
    it sets every second)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        blocked_after_s: float = LOOP_BLOCKED_S,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.blocked_after_s = blocked_after_s
        self.port: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._beat: asyncio.Task[None] | None = None
        self.beat_at = time.monotonic()

    async def start(self, port: int, host: str = POD_LISTEN_ADDRESS) -> None:
        self.beat_at = time.monotonic()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="worker-http", daemon=True).start()
        self._beat = asyncio.ensure_future(self._beating())

    async def _beating(self) -> None:
        while True:
            self.beat_at = time.monotonic()
            await asyncio.sleep(BEAT_S)

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def health(self) -> tuple[int, dict[str, Any]]:
        blocked = time.monotonic() - self.beat_at
        if blocked > self.blocked_after_s:
            return 503, {
                "status": "blocked",
                "detail": f"the event loop has not run for {blocked:.0f}s",
            }
        return 200, {"status": "ok"}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        ok, why = self.ready()
        return (200 if ok else 503), {"ready": ok, "detail": why}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        http = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(http.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    code, body = http.health() if path == "/healthz" else http.readiness()
                    self._send(code, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is no news

        return Handler
