"""Concurrent misses of one key window share one Redis read (store.TableStore.key_windows):
when a write drops a hot key's kept answer, every connection asks for it at once."""

from __future__ import annotations

import asyncio

import httpx
import redis.asyncio as aioredis

from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.sinks.redis_tables import RedisTableSink
from tests.api.harness import serve
from tests.api.test_cache import evalshas, pipeline, write_window
from tests.harness.waiting import unique

CONCURRENT = 16
BUSY_S = 0.3
# Holds Redis for BUSY_S (one script runs at a time), so every read sent meanwhile waits
# behind it: without sharing, each request's read would reach Redis.
_BUSY = """
local t = redis.call('TIME')
local stop = t[1] * 1000000 + t[2] + tonumber(ARGV[1])
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop
return 1
"""


def test_concurrent_misses_share_one_read(redis_server: EmbeddedRedis) -> None:
    name = unique("flight")
    spec = pipeline(name)
    with serve([spec], redis_server.url) as api:  # type: ignore[list-item]
        asyncio.run(_check(api.url, redis_server.url, spec, name))


async def _check(url: str, redis_url: str, spec: object, name: str) -> None:
    client = aioredis.from_url(redis_url)
    busy_client = aioredis.from_url(redis_url)
    sink = RedisTableSink(client, name, spec.spec.step("agg"))  # type: ignore[attr-defined]
    current = f"/pipelines/{name}/tables/agg/keys/k1/windows/current"
    limits = httpx.Limits(max_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        for offset in range(3):
            await write_window(client, sink, offset, 1, "k1", [1, 2.0])
            # Every connection open (and the write's announcement read) before Redis is held.
            await asyncio.gather(*(http.get(current) for _ in range(CONCURRENT)))
            pipe = client.pipeline(transaction=False)
            sink.announce(pipe)  # drops the kept answer, as any write does
            await pipe.execute()
            before = await evalshas(client)
            busy = asyncio.ensure_future(busy_client.eval(_BUSY, 0, int(BUSY_S * 1e6)))
            await asyncio.sleep(0.05)  # the script has started
            answers = await asyncio.gather(*(http.get(current) for _ in range(CONCURRENT)))
            await busy
            assert [a.status_code for a in answers] == [200] * CONCURRENT
            assert {a.json()["values"]["trips"] for a in answers} == {offset + 1}
            assert await evalshas(client) - before == 1, offset
    await client.aclose()
    await busy_client.aclose()


def test_kept_renderings_follow_writes(redis_server: EmbeddedRedis) -> None:
    """The fast path keeps a current window rendered while what it was made of is kept:
    after a write, the first request reads Redis, and the next ones (answered from
    memory again) must not get the rendering from before the write."""
    name = unique("rendered")
    spec = pipeline(name)
    with serve([spec], redis_server.url) as api:  # type: ignore[list-item]
        asyncio.run(_follow(api.url, redis_server.url, spec, name))


async def _follow(url: str, redis_url: str, spec: object, name: str) -> None:
    client = aioredis.from_url(redis_url)
    sink = RedisTableSink(client, name, spec.spec.step("agg"))  # type: ignore[attr-defined]
    current = f"/pipelines/{name}/tables/agg/keys/k1/windows/current"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for offset in range(20):
            await write_window(client, sink, offset, 1, "k1", [1, 2.0])
            before = await evalshas(client)
            for _ in range(4):
                body = (await http.get(current)).json()
                assert body["values"]["trips"] == offset + 1, offset
            if offset > 2:  # the subscription is up: one read, then memory
                assert await evalshas(client) - before == 1, offset
    await client.aclose()
