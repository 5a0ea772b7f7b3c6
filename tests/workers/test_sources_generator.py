"""generator on real Kafka: a seed repeats the same events, `count` is exact, every field
kind keeps its type and bounds, and a restart continues the same sequence."""

from __future__ import annotations

import asyncio
import re
import string
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_ports
from flowmill_workers.runtime.source_runner import SourceRunner, run_source
from tests.harness.waiting import unique
from tests.workers.test_sources_support import consume, running, source_pipeline

FIELDS: dict[str, dict[str, Any]] = {
    "seq": {"type": "sequence"},
    "trip_id": {"type": "uuid"},
    "region": {"type": "choice", "values": ["north", "south", "east"]},
    "riders": {"type": "int", "min": 1, "max": 4},
    "fare": {"type": "float", "min": 3, "max": 80, "precision": 2},
    "ratio": {"type": "float", "min": 0.25, "max": 0.5},
    "delay": {"type": "gauss", "mean": 10, "stddev": 2, "precision": 1},
    "member": {"type": "bool", "p": 0.25},
    "tag": {"type": "string"},
    "plan": {"type": "string", "values": ["day", "annual"]},
    "created": {"type": "timestamp"},
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def generator_pipeline(name: str, topics: list[str], seed: int, count: int, rate: float) -> Any:
    return source_pipeline(
        name,
        [(t, 2) for t in topics],
        [
            {
                "name": f"gen-{i}",
                "to": topic,
                "key": "region",
                "generator": {"fields": FIELDS, "seed": seed, "count": count, "rate": rate},
            }
            for i, topic in enumerate(topics)
        ],
    )


async def generate(kafka: EmbeddedKafka, seed: int, count: int) -> list[dict[str, Any]]:
    name = unique("gen")
    topic = f"{name}-out"
    kafka.create_topics([(topic, 2)])
    p = generator_pipeline(name, [topic], seed, count, rate=20_000)
    async with running(p, "gen-0", kafka.bootstrap_servers) as src:
        await src.until(src.runner.finished.is_set)
    records = await consume(kafka.bootstrap_servers, topic, count)
    return sorted((r.event for r in records), key=lambda e: e["seq"])


def total_at_least(runner: SourceRunner, count: int) -> bool:
    """Whether the source has written `count` records over all its runs."""
    return runner.seq >= count


def without_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "created"} for e in events]


async def test_same_seed_same_events_and_every_field_in_bounds(
    kafka_broker: EmbeddedKafka,
) -> None:
    count = 1500  # more than one block of the generator
    began = datetime.now(UTC)
    first = await generate(kafka_broker, seed=7, count=count)
    second = await generate(kafka_broker, seed=7, count=count)
    other = await generate(kafka_broker, seed=8, count=count)
    ended = datetime.now(UTC)

    assert len(first) == len(second) == count
    assert [e["seq"] for e in first] == list(range(count))
    assert without_time(first) == without_time(second)
    assert without_time(first) != without_time(other)
    assert len({e["trip_id"] for e in first}) == count

    for e in first:
        assert list(e) == list(FIELDS)
        assert uuid.UUID(e["trip_id"]).version == 4
        assert e["region"] in ("north", "south", "east")
        assert isinstance(e["riders"], int) and 1 <= e["riders"] <= 4
        assert isinstance(e["fare"], float) and 3 <= e["fare"] <= 80
        assert round(e["fare"], 2) == e["fare"]
        assert 0.25 <= e["ratio"] <= 0.5
        assert round(e["delay"], 1) == e["delay"]
        assert isinstance(e["member"], bool)
        assert len(e["tag"]) == 8 and set(e["tag"]) <= set(string.ascii_lowercase)
        assert e["plan"] in ("day", "annual")
        assert ISO_UTC.match(e["created"])
        created = datetime.fromisoformat(e["created"])
        assert began - timedelta(seconds=1) <= created <= ended + timedelta(seconds=1)

    # The draws look like their distributions (loose bounds; 1500 samples).
    riders = {e["riders"] for e in first}
    assert riders == {1, 2, 3, 4}
    assert 0.18 <= sum(e["member"] for e in first) / count <= 0.32
    assert 9.5 <= sum(e["delay"] for e in first) / count <= 10.5


async def test_count_is_exact_and_a_restart_continues_the_sequence(
    kafka_broker: EmbeddedKafka,
) -> None:
    count = 2500
    reference = without_time(await generate(kafka_broker, seed=3, count=count))

    name = unique("genresume")
    topic = f"{name}-out"
    kafka_broker.create_topics([(topic, 2)])
    p = generator_pipeline(name, [topic], seed=3, count=count, rate=5_000)
    stops = []
    # Stop twice mid-way (mid-block, at whatever event the stop lands on), then finish.
    for threshold in (700, 1500):
        async with running(p, "gen-0", kafka_broker.bootstrap_servers) as src:
            await src.until(partial(total_at_least, src.runner, threshold))
        stops.append(src.runner.seq)
    async with running(p, "gen-0", kafka_broker.bootstrap_servers) as src:
        await src.until(src.runner.finished.is_set)
        assert src.runner.seq == count

    records = await consume(kafka_broker.bootstrap_servers, topic, count)
    events = sorted((r.event for r in records), key=lambda e: e["seq"])
    assert len(events) == count, f"stopped after {stops}"
    assert without_time(events) == reference

    # Already finished: a further restart writes nothing.
    async with running(p, "gen-0", kafka_broker.bootstrap_servers) as src:
        await src.until(src.runner.finished.is_set)
        assert src.written() == 0


async def test_run_source_serves_metrics_and_readiness(kafka_broker: EmbeddedKafka) -> None:
    name = unique("genhttp")
    topic = f"{name}-out"
    kafka_broker.create_topics([(topic, 2)])
    p = generator_pipeline(name, [topic], seed=1, count=120, rate=10_000)
    port = free_ports(1)[0]
    stop = asyncio.Event()
    task = asyncio.create_task(run_source(p, "gen-0", kafka_broker.bootstrap_servers, stop, port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 30
            while True:
                assert not task.done(), task.result()
                try:
                    ready = await client.get("/readyz")
                    if ready.status_code == 200 and "finished" in ready.json()["detail"]:
                        break
                except httpx.TransportError:
                    pass  # not listening yet
                assert time.monotonic() < deadline, "the source never finished"
                await asyncio.sleep(0.05)
            metrics = (await client.get("/metrics")).text
            assert (await client.get("/healthz")).status_code == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    line = f'flowmill_events_out_total{{pipeline="{name}",step="gen-0"}} 120.0'
    assert line in metrics
