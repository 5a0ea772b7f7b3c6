"""What every route needs, created once per app (the Redis parts at startup, on the loop
that serves requests)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import HTTPConnection

from flowmill_api.catalog import Catalog
from flowmill_api.live import LiveHub
from flowmill_api.metrics import ApiMetrics
from flowmill_api.settings import ApiSettings
from flowmill_api.store import TableStore

MAX_PAGE = 1000
"""Largest `limit`/`n` of one request: bigger pages are slower than paging."""
MAX_OFFSET = 1_000_000_000
"""Offsets past this are refused (422) rather than handed to Redis as overflowing ranges."""
TIME_BOUND = 2**53
"""Epoch-ms parameters beyond ±2^53 are not times (and not exact in JavaScript)."""


@dataclass
class AppState:
    catalog: Catalog
    settings: ApiSettings
    metrics: ApiMetrics
    redis: aioredis.Redis
    """redis-py, for the live-update subscription."""
    store: TableStore
    """Reads, through the pipelined pool (flowmill_api.resp)."""
    hub: LiveHub


def app_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.app.state.flowmill
    return state
