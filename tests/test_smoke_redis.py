"""The embedded Redis server is a real redis-server that survives restarts on its port."""

from __future__ import annotations

import pytest
import redis

from flowmill.local.redis import EmbeddedRedis


def test_set_get(redis_client: redis.Redis) -> None:
    assert redis_client.set("greeting", "hello")
    assert redis_client.get("greeting") == b"hello"
    assert redis_client.incr("counter") == 1


def test_redis_client_starts_empty(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_restart_keeps_the_port(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> None:
    port, url = redis_server.port, redis_server.url
    redis_client.set("before", "1")

    redis_server.restart()

    assert (redis_server.port, redis_server.url) == (port, url)
    # The same client reconnects: its pooled connection died with the old server.
    assert redis_client.ping()
    assert redis_client.get("before") is None  # in memory only: the data went with the process
    redis_client.set("after", "2")
    assert redis_client.get("after") == b"2"


def test_stopped_server_refuses_then_serves_again(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    redis_server.stop()
    assert not redis_server.running
    with pytest.raises(redis.ConnectionError):
        redis_client.ping()

    redis_server.start()

    assert redis_client.ping()
