"""Windowed aggregation on real Kafka + Redis, checked against values computed here."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import redis

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, pipeline, produce, run_step

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % 60_000  # a minute boundary


def trip_events(n: int, seed: int, start_ms: int = BASE_MS) -> list[dict[str, Any]]:
    """Trips over 5 minutes from `start_ms`, in time order (so none is late)."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ts = start_ms + int(i * 300_000 / n)
        events.append(
            {
                "trip_id": f"t{i}",
                "region_id": rng.choice(["north", "south", "east", "west"]),
                "rider": f"r{rng.randrange(50)}",
                "fare": round(rng.uniform(3, 60), 2),
                "event_time": datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat(),
            }
        )
    return events


def expected_windows(
    events: list[dict[str, Any]], size_ms: int
) -> dict[tuple[str, int], dict[str, float]]:
    acc: dict[tuple[str, int], dict[str, Any]] = defaultdict(
        lambda: {"trips": 0, "revenue": 0.0, "fares": [], "riders": set()}
    )
    for e in events:
        ts = int(datetime.fromisoformat(e["event_time"]).timestamp() * 1000)
        a = acc[(e["region_id"], ts - ts % size_ms)]
        a["trips"] += 1
        a["revenue"] += e["fare"]
        a["fares"].append(e["fare"])
        a["riders"].add(e["rider"])
    return {
        k: {
            "trips": a["trips"],
            "revenue": a["revenue"],
            "avg_fare": sum(a["fares"]) / len(a["fares"]),
            "min_fare": min(a["fares"]),
            "max_fare": max(a["fares"]),
            "riders": len(a["riders"]),
        }
        for k, a in acc.items()
    }


def window_spec(table: str, topic: str) -> dict[str, Any]:
    return {
        "name": "by-region",
        "from": topic,
        "keyBy": "region_id",
        "window": {"size": "1m", "eventTime": "event_time"},
        "aggregate": {
            "trips": "count",
            "revenue": {"sum": "fare"},
            "avg_fare": {"avg": "fare"},
            "min_fare": {"min": "fare"},
            "max_fare": {"max": "fare"},
            "riders": {"distinct": "rider"},
        },
        "sink": {"redis": {"table": table}},
    }


def read_windows(
    client: redis.Redis, name: str, table: str
) -> dict[tuple[str, int], dict[str, float]]:
    out = {}
    for raw_key in client.zrange(serving.keys_key(name, table), 0, -1):
        key = raw_key.decode()
        for start in client.zrange(serving.window_index_key(name, table, key), 0, -1):
            h = client.hgetall(serving.window_key(name, table, key, int(start)))
            out[(key, int(start))] = {
                k.decode(): float(v)
                for k, v in h.items()
                if not k.decode().startswith("_") and k.decode() not in ("start", "end")
            }
    return out


def assert_same(actual: dict[Any, dict[str, float]], expected: dict[Any, dict[str, float]]) -> None:
    assert actual.keys() == expected.keys()
    for k, values in expected.items():
        for field, want in values.items():
            got = actual[k][field]
            if field in ("trips", "riders"):
                assert got == want, (k, field)
            else:
                # Sums of decimal fares in binary floating point: equal to 1e-9 relative.
                assert math.isclose(got, want, rel_tol=1e-9), (k, field, got, want)


async def test_tumbling_window_aggregates_match(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("win")
    p = pipeline(name, [{"name": name, "partitions": 3}], [window_spec("regions", name)])
    create_topics(kafka_broker, p)
    events = trip_events(6000, seed=1)
    # Keyed by trip, not region: a region's events spread over every partition, so the
    # per-partition partials must merge exactly.
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="trip_id")
    runner = await run_step(p, "by-region", kafka_broker.bootstrap_servers, redis_server.url, 6000)
    assert_same(read_windows(redis_client, name, "regions"), expected_windows(events, 60_000))
    assert redis_client.zcard(serving.windows_key(name, "regions")) == 5
    assert runner.metrics.labels(runner.metrics.events_out)._value.get() == 6000


async def test_a_batchs_partitions_are_written_by_one_script(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The partials of every partition in a batch are merged and written by one fenced
    script: with the events already in three partitions when the step starts (its first
    fetch holds all three), it runs fewer window scripts than there are partitions, one
    per partition being the unmerged minimum, and the result is exact."""
    name = unique("merged")
    p = pipeline(name, [{"name": name, "partitions": 3}], [window_spec("regions", name)])
    create_topics(kafka_broker, p)
    events = trip_events(3000, seed=5)
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="trip_id")
    before = script_calls(redis_client)
    await run_step(
        p, "by-region", kafka_broker.bootstrap_servers, redis_server.url, 3000, batch_size=10_000
    )
    assert script_calls(redis_client) - before < 3
    assert_same(read_windows(redis_client, name, "regions"), expected_windows(events, 60_000))


def script_calls(client: redis.Redis) -> int:
    """Scripts the server has run (EVALSHA and EVAL)."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


async def test_replayed_batches_are_not_counted_twice(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A second worker of the same step, started from offset 0 of Kafka (its commits
    deleted), must resume from the Redis checkpoint and add nothing."""
    name = unique("replay")
    p = pipeline(name, [{"name": name, "partitions": 2}], [window_spec("regions", name)])
    create_topics(kafka_broker, p)
    events = trip_events(2000, seed=2)
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="trip_id")
    await run_step(p, "by-region", kafka_broker.bootstrap_servers, redis_server.url, 2000)
    before = read_windows(redis_client, name, "regions")
    more = trip_events(500, seed=3, start_ms=BASE_MS + 300_000)
    await produce(kafka_broker.bootstrap_servers, name, more, key_field="trip_id")
    await run_step(p, "by-region", kafka_broker.bootstrap_servers, redis_server.url, 500)
    after = read_windows(redis_client, name, "regions")
    assert before != after
    assert_same(after, expected_windows(events + more, 60_000))


async def test_hopping_windows(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("hop")
    spec = window_spec("hops", name)
    spec["window"] = {"type": "hopping", "size": "2m", "advance": "1m", "eventTime": "event_time"}
    spec["aggregate"] = {"trips": "count", "revenue": {"sum": "fare"}}
    p = pipeline(name, [{"name": name, "partitions": 1}], [spec])
    create_topics(kafka_broker, p)
    events = trip_events(1200, seed=4)
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="trip_id")
    await run_step(p, "by-region", kafka_broker.bootstrap_servers, redis_server.url, 1200)
    expected: dict[tuple[str, int], dict[str, float]] = defaultdict(
        lambda: {"trips": 0, "revenue": 0.0}
    )
    for e in events:
        ts = int(datetime.fromisoformat(e["event_time"]).timestamp() * 1000)
        last = ts - ts % 60_000
        for start in (last - 60_000, last):
            expected[(e["region_id"], start)]["trips"] += 1
            expected[(e["region_id"], start)]["revenue"] += e["fare"]
    assert_same(read_windows(redis_client, name, "hops"), dict(expected))


async def test_late_events_are_counted_and_dead_lettered(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """allowedLateness 30s on 1-minute windows: an event for a window that ended more than
    30 s before the newest event seen is late; one within the 30 s still counts."""
    from tests.workers.harness import consume_all, counter_value

    name = unique("late")
    dlq = f"{name}-dlq"
    spec = window_spec("late", name)
    spec["window"]["allowedLateness"] = "30s"
    spec["deadLetter"] = dlq
    spec["aggregate"] = {"trips": "count"}
    p = pipeline(name, [{"name": name}, {"name": dlq}], [spec])
    create_topics(kafka_broker, p)

    def at(ms: int, trip: str) -> dict[str, Any]:
        iso = datetime.fromtimestamp((BASE_MS + ms) / 1000, tz=UTC).isoformat()
        return {"trip_id": trip, "region_id": "north", "fare": 1.0, "event_time": iso}

    events = [
        at(10_000, "a"),  # window 0
        at(70_000, "b"),  # window 1; watermark 70 s
        at(50_000, "c"),  # window 0 ended at 60 s, 60 + 30 > 70: still on time
        at(100_000, "d"),  # watermark 100 s
        at(20_000, "e"),  # window 0: 60 + 30 <= 100: late
        at(95_000, "f"),  # window 1: fine
    ]
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="trip_id")
    runner = await run_step(p, "by-region", kafka_broker.bootstrap_servers, redis_server.url, 6)
    windows = read_windows(redis_client, name, "late")
    assert windows == {
        ("north", BASE_MS): {"trips": 2.0},
        ("north", BASE_MS + 60_000): {"trips": 3.0},
    }
    dead = await consume_all(kafka_broker.bootstrap_servers, dlq, 1)
    assert [json.loads(r.value)["trip_id"] for r in dead] == ["e"]
    assert "late event" in dict(dead[0].headers)["flowmill-reason"].decode()
    assert counter_value(runner, "events_late") == 1
