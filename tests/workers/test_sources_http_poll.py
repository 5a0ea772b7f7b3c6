"""httpPoll against a local GBFS-shaped feed: changing, unchanged, 304, 500, invalid JSON,
a ttl longer than the interval, and a restart that must not re-emit the last snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson
from aiohttp import web

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_ports
from flowmill.spec import SourceSpec
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.sources.base import Chunk, SourceContext
from flowmill_workers.sources.http_poll import HttpPoll
from tests.harness.waiting import unique
from tests.workers.test_sources_support import consume, running, source_pipeline

LAST_MODIFIED = "Wed, 21 Oct 2025 07:28:00 GMT"


@dataclass
class Reply:
    status: int = 200
    document: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Feed:
    """Answers each GET with the next scripted reply, then 304 forever; records requests."""

    script: list[Reply]
    requests: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers)))
        reply = self.script.pop(0) if self.script else Reply(304)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body
        if body is None and reply.document is not None:
            body = orjson.dumps(reply.document)
        return web.Response(
            status=reply.status, body=body, headers=reply.headers, content_type="application/json"
        )


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Feed, str]]:
    """The feed on a free loopback port (started in the test's own event loop)."""
    the_feed = Feed([])
    app = web.Application()
    app.router.add_get("/gbfs/station_status.json", the_feed.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield the_feed, f"http://127.0.0.1:{port}/gbfs/station_status.json"
    finally:
        await runner.cleanup()


def station(sid: str, bikes: int, **extra: Any) -> dict[str, Any]:
    return {"station_id": sid, "num_bikes_available": bikes, "is_renting": 1, **extra}


def status(last_updated: int, ttl: int, stations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "last_updated": last_updated,
        "ttl": ttl,
        "version": "2.3",
        "data": {"stations": stations},
    }


def stamped(stations: list[dict[str, Any]], last_updated: int) -> list[dict[str, Any]]:
    """What each exploded event must look like: the station, plus the snapshot time
    unless the station carries its own."""
    return [{"last_updated": last_updated, **s} for s in stations]


async def test_gbfs_feed_lands_each_new_snapshot_once(kafka_broker: EmbeddedKafka) -> None:
    async with serving() as (the_feed, url):
        await check_gbfs_feed(kafka_broker, the_feed, url)


async def check_gbfs_feed(kafka_broker: EmbeddedKafka, the_feed: Feed, url: str) -> None:
    name = unique("gbfs")
    topic = f"{name}-stations"  # the broker is shared by the whole session
    kafka_broker.create_topics([(topic, 1)])
    p = source_pipeline(
        name,
        [(topic, 1)],
        [
            {
                "name": "gbfs",
                "to": topic,
                "key": "station_id",
                "httpPoll": {"url": url, "interval": "100ms", "explode": "data.stations"},
            }
        ],
    )
    snap_a = [station("a", 3), station("b", 0), station("c", 7, last_updated=999)]
    snap_b = [station("a", 2), station("b", 1)]
    snap_c = [station("a", 2), station("b", 1), station("c", 5)]
    snap_d = [station("d", 9)]
    the_feed.script = [
        Reply(document=status(1000, 0, snap_a), headers={"ETag": '"a"'}),
        Reply(304),  # answers the If-None-Match the poller must send
        Reply(document=status(1000, 0, snap_a)),  # same last_updated: not a new snapshot
        Reply(500, body=b"upstream down"),
        Reply(200, body=b"{not json"),
        Reply(document=status(1010, 1, snap_b), headers={"Last-Modified": LAST_MODIFIED}),
        Reply(document=status(1020, 0, snap_c), headers={"ETag": '"c"'}),
    ]
    expected = stamped(snap_a, 1000) + stamped(snap_b, 1010) + stamped(snap_c, 1020)

    async with running(p, "gbfs", kafka_broker.bootstrap_servers) as src:
        await src.until(lambda: len(the_feed.requests) >= 9, timeout=20)
        await src.until(lambda: src.written() >= len(expected))
        polls = {
            result: src.metric("flowmill_source_polls_total", result=result)
            for result in ("ok", "unchanged", "not_modified", "error")
        }
        failed = src.metric("flowmill_events_failed_total")

    records = await consume(kafka_broker.bootstrap_servers, topic, len(expected))
    assert [r.event for r in records] == expected
    assert [r.key for r in records] == [s["station_id"].encode() for s in expected]

    headers = [h for _, h in the_feed.requests]
    assert "If-None-Match" not in headers[0]
    assert headers[1]["If-None-Match"] == '"a"'
    # The 200 without an ETag replaced the validators: nothing conditional after it.
    assert "If-None-Match" not in headers[3]
    assert headers[6]["If-Modified-Since"] == LAST_MODIFIED
    assert headers[7]["If-None-Match"] == '"c"'
    assert "If-Modified-Since" not in headers[7]

    times = [t for t, _ in the_feed.requests]
    # Snapshot B said ttl=1 with a 100ms interval: the next poll waited the ttl.
    assert times[6] - times[5] >= 0.95
    # Snapshot C said ttl=0 again: back to the interval.
    assert times[7] - times[6] < 0.9
    # The 500 and the invalid JSON were retried, not fatal.
    assert polls == {"ok": 3, "unchanged": 1, "not_modified": polls["not_modified"], "error": 2}
    assert polls["not_modified"] >= 2
    assert failed == 2

    # A restarted poller continues from the topic: it sends the last ETag, and a server
    # that ignores it and re-serves snapshot C still produces nothing new.
    the_feed.requests.clear()
    the_feed.script = [
        Reply(document=status(1020, 0, snap_c), headers={"ETag": '"c"'}),
        Reply(document=status(1030, 0, snap_d)),
    ]
    async with running(p, "gbfs", kafka_broker.bootstrap_servers) as src:
        await src.until(lambda: src.written() >= 1)
        await src.until(lambda: len(the_feed.requests) >= 3)
    assert the_feed.requests[0][1]["If-None-Match"] == '"c"'

    records = await consume(kafka_broker.bootstrap_servers, topic, len(expected) + 1)
    assert [r.event for r in records] == [*expected, *stamped(snap_d, 1030)]


# -- failures, without Kafka: the source's chunks are read directly ---------------------


def poller(url: str, interval: str, timeout: str = "2s", max_backoff: float = 300.0) -> HttpPoll:
    spec = SourceSpec.model_validate(
        {
            "name": "feed",
            "to": "t",
            "httpPoll": {"url": url, "interval": interval, "timeout": timeout},
        }
    )
    return HttpPoll(
        SourceContext("p", spec, WorkerMetrics("p", "feed"), "unused:9092"), max_backoff
    )


async def first_chunk(poll: HttpPoll) -> Chunk:
    chunks = poll.chunks()
    assert isinstance(chunks, AsyncGenerator)
    try:
        return await asyncio.wait_for(anext(chunks), 10)
    finally:
        await chunks.aclose()


def errors(poll: HttpPoll) -> float:
    registry = poll.ctx.metrics.registry
    labels = {"pipeline": "p", "step": "feed"}
    polls = registry.get_sample_value("flowmill_source_polls_total", {**labels, "result": "error"})
    assert registry.get_sample_value("flowmill_events_failed_total", labels) == polls
    return polls or 0.0


async def test_errors_back_off_exponentially_up_to_the_cap() -> None:
    async with serving() as (the_feed, url):
        the_feed.script = [Reply(503, body=b"busy") for _ in range(6)]
        the_feed.script.append(Reply(document={"ok": True}))
        poll = poller(url, "50ms", max_backoff=0.4)
        chunk = await first_chunk(poll)
    assert [orjson.loads(v or b"") for _, v, _ in chunk.records] == [{"ok": True}]
    assert errors(poll) == 6
    times = [t for t, _ in the_feed.requests]
    gaps = [b - a for a, b in pairwise(times)]
    # Failure n waits between half and all of min(cap, interval * 2^(n-1)): lower bounds
    # only (a loaded machine is late, never early), the cap with generous slack.
    ceilings = [min(0.4, 0.05 * 2**n) for n in range(6)]
    assert all(gap >= c / 2 * 0.9 for gap, c in zip(gaps, ceilings, strict=True))
    assert sum(gaps) >= sum(c / 2 for c in ceilings)
    assert max(gaps) < 0.4 + 1.0


async def test_timeouts_and_refused_connections_are_retried() -> None:
    async with serving() as (the_feed, url):
        the_feed.script = [Reply(delay=1.0, document={"late": True}), Reply(document={"n": 1})]
        poll = poller(url, "50ms", timeout="200ms")
        chunk = await first_chunk(poll)
    assert [orjson.loads(v or b"") for _, v, _ in chunk.records] == [{"n": 1}]
    assert errors(poll) == 1

    refused = poller(f"http://127.0.0.1:{free_ports(1)[0]}/", "20ms", max_backoff=0.05)
    chunks = refused.chunks()
    # Never a chunk, and the refusals counted as it retries (the bound is for a loaded
    # machine: a fixed 0.5 s once saw the first attempt not yet made).
    pending = asyncio.ensure_future(anext(chunks))
    deadline = time.monotonic() + 20
    try:
        while errors(refused) < 3:
            assert not pending.done(), pending.result()
            assert time.monotonic() < deadline, f"{errors(refused)} errors in 20 s"
            await asyncio.sleep(0.02)
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
