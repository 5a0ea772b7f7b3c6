"""The app factory: one FastAPI app serving any number of Pipelines from one Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.types import ASGIApp, Receive, Scope, Send

from flowmill.spec import Pipeline
from flowmill_api.catalog import Catalog
from flowmill_api.errors import install_error_handlers
from flowmill_api.fastpath import FastPath
from flowmill_api.health import HealthReader
from flowmill_api.live import LiveHub
from flowmill_api.metrics import ApiMetrics, MetricsMiddleware
from flowmill_api.redis_pool import RedisPool
from flowmill_api.routes import catalog, dashboard, health, latest, live, pipeline_health, windows
from flowmill_api.security import Gate, SecurityMiddleware
from flowmill_api.settings import ApiSettings
from flowmill_api.state import AppState
from flowmill_api.store import TableStore

DESCRIPTION = """
Serves the tables a flowmill Pipeline's workers write to Redis: windows per key, top keys
of a window, latest-state tables with bounding-box queries, and live updates over
Server-Sent Events and WebSocket. Times are epoch milliseconds. A key's windows may be
answered from memory while their table has had no write since; every other answer is
read from Redis when asked.
"""


class FlowmillApp(FastAPI):
    """FastAPI with the fast path in front of its whole middleware stack."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def behind(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI itself: what the fast path hands requests to."""
        await super().__call__(scope, receive, send)


def redis_client(url: str, settings: ApiSettings) -> aioredis.Redis:
    """redis-py for the pub/sub subscription: gives up on an unreachable Redis quickly
    (one retry covers a connection that died with a restarted server)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=4,
        timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        decode_responses=True,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


def create_app(
    pipelines: Iterable[Pipeline], redis_url: str, settings: ApiSettings | None = None
) -> FastAPI:
    """An app serving every table of `pipelines` from the Redis at `redis_url`."""
    settings = settings or ApiSettings()
    catalog_ = Catalog(pipelines)
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client(redis_url, settings)
        pool = RedisPool(
            redis_url,
            size=settings.redis_connections,
            timeout=settings.redis_timeout_seconds,
        )
        hub = LiveHub(client, settings)
        store = TableStore(pool, [t for ts in catalog_.tables.values() for t in ts.values()])
        health_reader = HealthReader(
            catalog_.pipelines,
            settings.run_status_file,
            settings.prometheus_url,
            settings.prometheus_rate_window,
        )
        app.state.flowmill = AppState(
            catalog=catalog_,
            settings=settings,
            metrics=metrics,
            redis=client,
            store=store,
            hub=hub,
            health=health_reader,
        )
        await hub.start()
        await store.versions.start()
        try:
            yield
        finally:
            await store.versions.close()
            await health_reader.close()
            await hub.stop()
            await pool.close()
            await client.aclose()
            await client.connection_pool.disconnect()

    app = FlowmillApp(
        title="flowmill API",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app, settings.retry_after_seconds)
    for module in (catalog, windows, latest, live, health, pipeline_health, dashboard):
        app.include_router(module.router)
    dashboard.mount_static(app)
    gate = Gate(settings) if settings.api_keys or settings.rate_limit else None
    if settings.fast_path:
        app.front = FastPath(app.behind, app, gate)
    if gate is not None:
        app.add_middleware(SecurityMiddleware, gate=gate)
        _document_security(app, settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "OPTIONS"],
            allow_headers=["X-API-Key", "Authorization", "Last-Event-ID"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _document_security(app: FastAPI, settings: ApiSettings) -> None:
    """Show the key scheme and the 401/429 answers in /docs when they are switched on."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        if settings.api_keys:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/pipelines"):
                continue
            for op in operations.values():
                if settings.api_keys:
                    op["security"] = [{"ApiKey": []}]
                    op["responses"]["401"] = {"description": "No valid API key", "content": error}
                if settings.rate_limit:
                    op["responses"]["429"] = {"description": "Rate limited", "content": error}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
