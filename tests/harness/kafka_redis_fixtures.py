"""pytest fixtures for the real Kafka broker and Redis server (see flowmill/local/).

Loaded as a plugin from tests/conftest.py (`pytest_plugins`). A component that is not
provisioned makes the fixture raise ComponentMissing, so dependent tests error with the
provisioning hint instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flowmill.local import find_binary
from flowmill.local.kafka import EmbeddedKafka, kafka_classpath
from flowmill.local.redis import EmbeddedRedis


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedKafka]:
    """One KRaft broker for the whole session. Topics are not auto-created: tests create
    theirs with kafka_broker.create_topics() under names no other test uses."""
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One redis-server for the whole session; tests may stop(), start() or restart() it."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client on an empty database of a running server."""
    # An earlier test may have stopped the server to test an outage.
    if not redis_server.running:
        redis_server.start()
    with redis_server.client() as client:
        client.flushall()
        yield client


# For tests whose command starts its own Kafka or Redis (`flowmill run` without
# --bootstrap-servers): they need the component provisioned, not the session's server, and
# these fixtures both check that and mark them (tests/conftest.py).


@pytest.fixture(scope="session")
def kafka_installed() -> str:
    """The broker's classpath; ComponentMissing names scripts/provision.sh if it is not."""
    return kafka_classpath()


@pytest.fixture(scope="session")
def redis_installed() -> Path:
    """The redis-server binary; ComponentMissing names scripts/provision.sh if it is not."""
    return find_binary("redis-server")
