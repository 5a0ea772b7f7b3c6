"""The worker's small HTTP side: /metrics for Prometheus, /healthz and /readyz for the
kubelet's probes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

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


class WorkerHttp:
    """Serves metrics and probes; `ready` is asked at every /readyz."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]) -> None:
        self.registry = registry
        self.ready = ready
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.json_response({"ready": ok, "detail": why}, status=200 if ok else 503)

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
