"""The current window's top keys are kept in memory (and rendered, on the fast path) while
the table is unwritten: a write must change the very next answer, on every variant
asked (n, order, by; the fast path's and FastAPI's)."""

from __future__ import annotations

import asyncio
import random

import httpx
import redis.asyncio as aioredis

from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.sinks.redis_tables import RedisTableSink
from tests.api.harness import serve
from tests.api.test_cache import evalshas, pipeline, write_window
from tests.harness.waiting import unique

KEYS = ["k1", "k2", "k3", "k4"]
WRITES = 24
ASKED = 3
"""Each variant is asked this many times after a write: the first reads, the rest must
come from memory and still be the new answer."""
# Query strings: the first three are the fast path's; `final=false` goes to FastAPI's route.
VARIANTS = ["", "?n=2", "?order=asc&by=revenue", "?final=false"]


def test_a_write_changes_the_next_top_answer(redis_server: EmbeddedRedis) -> None:
    name = unique("top")
    spec = pipeline(name)
    with serve([spec], redis_server.url) as api:  # type: ignore[list-item]
        asyncio.run(_follow(api.url, redis_server.url, spec, name))


def _expected(counts: dict[str, int], fares: dict[str, float], variant: str) -> list[str]:
    """The keys the variant ranks (ties broken as Redis breaks them: by member)."""
    if "by=revenue" in variant:  # ascending by revenue
        ranked = sorted(counts, key=lambda k: (fares[k], k))
    else:
        ranked = sorted(counts, key=lambda k: (counts[k], k), reverse=True)
    return ranked[:2] if "n=2" in variant else ranked


async def _follow(url: str, redis_url: str, spec: object, name: str) -> None:
    rng = random.Random(14)
    client = aioredis.from_url(redis_url)
    sink = RedisTableSink(client, name, spec.spec.step("agg"))  # type: ignore[attr-defined]
    top = f"/pipelines/{name}/tables/agg/windows/current/top"
    counts: dict[str, int] = {}
    fares: dict[str, float] = {}
    reads_after_warmup: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for offset in range(WRITES):
            key = rng.choice(KEYS)
            fare = float(rng.randint(1, 50))
            await write_window(client, sink, offset, 1, key, [1, fare])
            counts[key] = counts.get(key, 0) + 1
            fares[key] = fares.get(key, 0.0) + fare
            before = await evalshas(client)
            for variant in VARIANTS:
                want = _expected(counts, fares, variant)
                for _ in range(ASKED):
                    body = (await http.get(top + variant)).json()
                    got = [k["key"] for k in body["keys"]]
                    assert got == want, (offset, variant, body)
                    assert {k["key"]: k["values"]["trips"] for k in body["keys"]} == {
                        k: counts[k] for k in want
                    }
            if offset > 2:  # the subscription is up
                reads_after_warmup.append(await evalshas(client) - before)
    await client.aclose()
    # One read per variant after each write, the other asks answered from memory.
    assert reads_after_warmup and all(r == len(VARIANTS) for r in reads_after_warmup), (
        reads_after_warmup
    )
