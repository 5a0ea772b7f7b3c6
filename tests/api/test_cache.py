"""Key-window answers kept in memory (flowmill_api.versions) are never stale after a write:
each write through the workers' sink script is seen by the very next request, a hot key
unwritten costs no Redis command, and a lost subscription drops what was kept."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as aioredis

from flowmill.local.redis import EmbeddedRedis
from flowmill.manifest import parse_pipeline
from flowmill_workers.sinks.redis_tables import PartitionRange, RedisTableSink
from tests.api.harness import serve
from tests.harness.waiting import unique

MINUTE = 60_000
START = 1_763_800_020_000 - 1_763_800_020_000 % MINUTE
AGGREGATES = [("trips", "count", None), ("revenue", "sum", "fare")]


def pipeline(name: str) -> object:
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": name},
            "spec": {
                "topics": [{"name": "trips"}],
                "steps": [
                    {
                        "name": "agg",
                        "from": "trips",
                        "keyBy": "region",
                        "window": {"size": "1m", "eventTime": "ts"},
                        "aggregate": {"trips": "count", "revenue": {"sum": "fare"}},
                        "sink": {"redis": {"table": "agg"}},
                    }
                ],
            },
        }
    )


async def evalshas(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def write_window(
    client: aioredis.Redis, sink: RedisTableSink, offset: int, n: int, key: str, values: list[float]
) -> list[Any]:
    """A batch of `n` events at `offset` of trips/0 through the workers' own sink: `key`'s
    window at START set to `values`, announced as the workers end each batch's pipeline.
    Returns the pipeline's replies."""
    pipe = client.pipeline(transaction=False)
    rng = PartitionRange("trips", 0, offset, offset + n)
    await sink.apply_windows(
        pipe, rng, [[key, str(START), values]], AGGREGATES, MINUTE, 100, None,
        starts_fresh=offset == 0,
    )  # fmt: skip
    sink.announce(pipe)
    return list(await pipe.execute())


def test_a_write_is_seen_by_the_next_request(redis_server: EmbeddedRedis) -> None:
    name = unique("cache")
    spec = pipeline(name)
    with serve([spec], redis_server.url) as api:  # type: ignore[list-item]
        asyncio.run(_check(api.url, redis_server.url, spec, name))


async def _check(url: str, redis_url: str, spec: object, name: str) -> None:
    client = aioredis.from_url(redis_url)
    sink = RedisTableSink(client, name, spec.spec.step("agg"))  # type: ignore[attr-defined]
    offset = 0

    async def write(key: str, n: int) -> None:
        nonlocal offset
        assert (await write_window(client, sink, offset, n, key, [n, 2.0 * n]))[0][0] == 1
        offset += n

    current = f"/pipelines/{name}/tables/agg/keys/k1/windows/current"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        await write("k1", 1)
        # The API learns the table's version from its subscription once it is up.
        watch_ready = await _served_from_memory(http, current, client)
        assert watch_ready, "the hot key is still read from Redis"
        expected = 1
        for i in range(150):
            n = 1 + i % 3
            await write("k1" if i % 5 else "k2", n)  # a write to another key of the table too
            expected += n if i % 5 else 0
            # Twice: the first answer after the write is rendered anew, the repeat is
            # sent as kept rendered (fastpath._Kept) until the next write.
            for _ in range(2):
                body = (await http.get(current)).json()
                assert body["values"]["trips"] == expected, (i, body)
                assert body["values"]["revenue"] == 2.0 * expected
        # Kept answers are copies: a route changing its answer changes nothing kept.
        assert (await http.get(f"/pipelines/{name}/tables/agg/keys/k1/windows/latest?n=1")).json()[
            "windows"
        ][0]["values"]["trips"] == expected

        # The subscription killed: nothing is served from memory until it is back, and a
        # write meanwhile (announced to nobody) is still seen at once.
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await write("k1", 5)
        body = (await http.get(current)).json()
        assert body["values"]["trips"] == expected + 5
        assert await _served_from_memory(http, current, client)
    await client.aclose()


async def _served_from_memory(http: httpx.AsyncClient, path: str, client: aioredis.Redis) -> bool:
    """Whether, once warm, 20 requests for `path` run no script in Redis."""

    async def probe() -> bool:
        await http.get(path)
        before = await evalshas(client)
        for _ in range(20):
            assert (await http.get(path)).status_code == 200
        return await evalshas(client) == before

    for _ in range(50):
        if await probe():
            return True
        await asyncio.sleep(0.1)
    return False
