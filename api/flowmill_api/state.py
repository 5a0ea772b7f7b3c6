"""What every route needs, created once per app (the Redis parts at startup, on the loop
that serves requests)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import HTTPConnection

from flowmill_api.catalog import Catalog
from flowmill_api.health import HealthReader
from flowmill_api.live import LiveHub
from flowmill_api.metrics import ApiMetrics
from flowmill_api.settings import ApiSettings
from flowmill_api.store import TableStore


@dataclass
class AppState:
    catalog: Catalog
    settings: ApiSettings
    metrics: ApiMetrics
    redis: aioredis.Redis
    """redis-py, for the live-update subscription."""
    store: TableStore
    """Reads, through the pipelined pool (flowmill_api.redis_pool)."""
    hub: LiveHub
    health: HealthReader
    """The health view's reads (the run's status or Prometheus, and Kafka)."""


def app_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.app.state.flowmill
    return state
