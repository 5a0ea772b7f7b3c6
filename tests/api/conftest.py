"""Fixtures of the API tests: one Pipeline per test module, filled by the real worker
steps on the session's Kafka and Redis, served by a real uvicorn on a free port.

Tests here never use the `redis_client` fixture: it empties Redis, which would drop the
module's tables under the other tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.api.harness import ApiServer, Served, fill, serve


@pytest.fixture(scope="module")
def served(kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis) -> Served:
    if not redis_server.running:  # an earlier module may have stopped it
        redis_server.start()
    return asyncio.run(fill(kafka_broker, redis_server.url, "api"))


@pytest.fixture(scope="module")
def api(served: Served) -> Iterator[ApiServer]:
    with serve([served.pipeline], served.redis_url) as server:
        yield server


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client
