"""Each step kind on real Kafka + Redis: feed known events, check outputs computed here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import redis

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.runtime.dead_letter import REASON_HEADER
from tests.harness.waiting import unique
from tests.workers.harness import (
    consume_all,
    counter_value,
    create_topics,
    pipeline,
    produce,
    run_step,
)


def headers_of(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def test_bad_input_is_dead_lettered_and_counts_add_up(
    kafka_broker: EmbeddedKafka,
) -> None:
    name = unique("bad")
    src, out, dlq = f"{name}-in", f"{name}-out", f"{name}-dlq"
    schema = {
        "type": "object",
        "required": ["id", "fare"],
        "properties": {"id": {"type": "integer"}, "fare": {"type": "number"}},
    }
    p = pipeline(
        name,
        [{"name": src}, {"name": out}, {"name": dlq}],
        [
            {
                "name": "check",
                "from": src,
                "deadLetter": dlq,
                "validate": {"schema": schema},
                "map": {"fare_cents": "int(fare * 100.0)"},
                "sink": {"kafka": {"topic": out}},
            }
        ],
    )
    create_topics(kafka_broker, p)
    good = [{"id": i, "fare": 1.5 + i} for i in range(100)]
    bad: list[bytes] = [
        b"{not json",
        json.dumps({"id": "seven", "fare": 3.0}).encode(),  # wrong type
        json.dumps({"id": 8}).encode(),  # missing field
        b"\xff\xfe\x00garbage",  # not UTF-8
        json.dumps({"id": 9, "fare": 1.0, "pad": "x" * 600_000}).encode(),  # oversized
        b"[1, 2, 3]",  # not an object
    ]
    payloads: list[bytes | dict[str, Any]] = [*good[:50], *bad, *good[50:]]
    await produce(kafka_broker.bootstrap_servers, src, payloads)
    runner = await run_step(p, "check", kafka_broker.bootstrap_servers, None, len(payloads))

    outputs = await consume_all(kafka_broker.bootstrap_servers, out, len(good))
    assert [json.loads(r.value) for r in outputs] == [
        {**e, "fare_cents": int(e["fare"] * 100)} for e in good
    ]
    dead = await consume_all(kafka_broker.bootstrap_servers, dlq, len(bad))
    assert [r.value for r in dead] == bad  # original bytes, in order
    reasons = [headers_of(r)[REASON_HEADER] for r in dead]
    assert "malformed JSON" in reasons[0]
    assert "schema validation failed at id" in reasons[1]
    assert "'fare' is a required property" in reasons[2]
    assert "not valid UTF-8" in reasons[3]
    assert "oversized" in reasons[4]
    assert "expected a JSON object" in reasons[5]
    assert headers_of(dead[0])["flowmill-source-topic"] == src
    assert headers_of(dead[0])["flowmill-source-offset"] == "50"
    assert counter_value(runner, "events_in") == counter_value(
        runner, "events_out"
    ) + counter_value(runner, "events_failed")
    assert counter_value(runner, "events_failed") == len(bad)


async def test_filter_and_key(kafka_broker: EmbeddedKafka) -> None:
    name = unique("filter")
    src, out = f"{name}-in", f"{name}-out"
    p = pipeline(
        name,
        [{"name": src}, {"name": out, "partitions": 3}],
        [
            {
                "name": "big-fares",
                "from": src,
                "filter": "fare >= 20.0 && region != 'test'",
                "keyBy": "region",
                "sink": {"kafka": {"topic": out}},
            }
        ],
    )
    create_topics(kafka_broker, p)
    events = [
        {"n": i, "fare": float(i % 40), "region": ["north", "south", "test"][i % 3]}
        for i in range(300)
    ]
    await produce(kafka_broker.bootstrap_servers, src, events)
    runner = await run_step(p, "big-fares", kafka_broker.bootstrap_servers, None, 300)
    expected = [e for e in events if e["fare"] >= 20 and e["region"] != "test"]
    got = await consume_all(kafka_broker.bootstrap_servers, out, len(expected))
    assert sorted(json.loads(r.value)["n"] for r in got) == [e["n"] for e in expected]
    assert all(r.key.decode() == json.loads(r.value)["region"] for r in got)
    assert counter_value(runner, "events_filtered") == 300 - len(expected)


async def test_latest_state_table_with_geo_and_deletes(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("latest")
    p = pipeline(
        name,
        [{"name": name, "partitions": 2}],
        [
            {
                "name": "positions",
                "from": name,
                "keyBy": "vehicle_id",
                "latest": {"deleteWhen": "status == 'retired'"},
                "sink": {"redis": {"table": "vehicles", "geo": {"lat": "lat", "lon": "lon"}}},
            }
        ],
    )
    create_topics(kafka_broker, p)
    events = []
    for step in range(20):
        for v in range(10):
            status = "retired" if (v == 3 and step == 19) else "active"
            events.append(
                {
                    "vehicle_id": f"v{v}",
                    "lat": 40.0 + v / 100 + step / 1000,
                    "lon": -73.9,
                    "step": step,
                    "status": status,
                }
            )
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="vehicle_id")
    await run_step(p, "positions", kafka_broker.bootstrap_servers, redis_server.url, len(events))
    table = redis_client.hgetall(serving.latest_key(name, "vehicles"))
    latest = {k.decode(): json.loads(v) for k, v in table.items()}
    assert set(latest) == {f"v{v}" for v in range(10)} - {"v3"}
    assert all(e["step"] == 19 for e in latest.values())
    near = redis_client.geosearch(
        serving.geo_key(name, "vehicles"), longitude=-73.9, latitude=40.019, radius=3, unit="km"
    )
    assert {m.decode() for m in near} == {"v0", "v1", "v2"}


async def test_correlate_joins_start_and_end(kafka_broker: EmbeddedKafka) -> None:
    name = unique("join")
    starts, ends, done = f"{name}-starts", f"{name}-ends", f"{name}-done"
    p = pipeline(
        name,
        [{"name": starts, "partitions": 2}, {"name": ends, "partitions": 2}, {"name": done}],
        [
            {
                "name": "trips",
                "from": starts,
                "correlate": {
                    "with": ends,
                    "key": "trip_id",
                    "timeout": "1h",
                    "rightPrefix": "end_",
                },
                "sink": {"kafka": {"topic": done, "key": "trip_id"}},
            }
        ],
    )
    create_topics(kafka_broker, p)
    start_events = [{"trip_id": f"t{i}", "fare": 10 + i} for i in range(40)]
    end_events = [{"trip_id": f"t{i}", "dropoff": f"z{i % 5}"} for i in range(0, 40, 2)]
    await produce(kafka_broker.bootstrap_servers, starts, start_events, key_field="trip_id")
    await produce(kafka_broker.bootstrap_servers, ends, end_events, key_field="trip_id")
    await run_step(p, "trips", kafka_broker.bootstrap_servers, None, 60)
    joined = [
        json.loads(r.value) for r in await consume_all(kafka_broker.bootstrap_servers, done, 20)
    ]
    assert sorted(j["trip_id"] for j in joined) == sorted(e["trip_id"] for e in end_events)
    for j in joined:
        i = int(j["trip_id"][1:])
        assert j["fare"] == 10 + i and j["end_dropoff"] == f"z{i % 5}" and j["_expired"] is False

    # The other 20 starts wait in the changelog; a new worker (after a "restart") finds
    # them, so ends arriving now still complete their trips.
    late_ends = [{"trip_id": f"t{i}", "dropoff": "late"} for i in range(1, 40, 2)]
    await produce(kafka_broker.bootstrap_servers, ends, late_ends, key_field="trip_id")
    await run_step(p, "trips", kafka_broker.bootstrap_servers, None, 20)
    joined = [
        json.loads(r.value) for r in await consume_all(kafka_broker.bootstrap_servers, done, 40)
    ]
    assert len(joined) == 40
    assert sorted(j["trip_id"] for j in joined) == sorted(f"t{i}" for i in range(40))


async def test_parquet_lake_is_queryable_with_duckdb(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    name = unique("lake")
    p = pipeline(
        name,
        [{"name": name, "partitions": 2}],
        [
            {
                "name": "land",
                "from": name,
                "sink": {
                    "parquet": {
                        "path": str(tmp_path / "lake"),
                        "timeField": "ts",
                        "partitionBy": "hour",
                        "flushInterval": "1s",
                    }
                },
            }
        ],
    )
    create_topics(kafka_broker, p)
    events = [
        {"station": f"s{i % 7}", "bikes": i % 13, "ts": f"2026-11-22T0{i % 3}:15:00+00:00"}
        for i in range(500)
    ]
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="station")
    await run_step(p, "land", kafka_broker.bootstrap_servers, None, 500)
    rows = duckdb.sql(
        f"SELECT hour, count(*), sum(bikes) FROM read_parquet('{tmp_path}/lake/**/*.parquet', "
        "hive_partitioning = true) GROUP BY hour ORDER BY hour"
    ).fetchall()
    expected: dict[int, list[int]] = {}
    for e in events:
        hour = int(e["ts"][11:13])
        expected.setdefault(hour, [0, 0])
        expected[hour][0] += 1
        expected[hour][1] += e["bikes"]
    assert [(int(h), c, s) for h, c, s in rows] == [
        (h, c, s) for h, (c, s) in sorted(expected.items())
    ]


async def test_function_escape_hatch(kafka_broker: EmbeddedKafka) -> None:
    """A named Python callable: may return a list (fan-out), None (drop), or raise
    (dead-lettered with the exception in the reason)."""
    name = unique("udf")
    src, out, dlq = f"{name}-in", f"{name}-out", f"{name}-dlq"
    p = pipeline(
        name,
        [{"name": src}, {"name": out}, {"name": dlq}],
        [
            {
                "name": "legs",
                "from": src,
                "deadLetter": dlq,
                "function": "tests.workers.udf:split_legs",
                "sink": {"kafka": {"topic": out}},
            }
        ],
    )
    create_topics(kafka_broker, p)
    events = [
        {"trip": "a", "legs": 2},
        {"trip": "b", "legs": 0},
        {"trip": "c", "legs": -1},
        {"trip": "d", "legs": 3},
    ]
    await produce(kafka_broker.bootstrap_servers, src, events)
    runner = await run_step(p, "legs", kafka_broker.bootstrap_servers, None, len(events))
    got = [json.loads(r.value) for r in await consume_all(kafka_broker.bootstrap_servers, out, 5)]
    assert got == [{"trip": "a", "leg": 0}, {"trip": "a", "leg": 1}] + [
        {"trip": "d", "leg": i} for i in range(3)
    ]
    dead = await consume_all(kafka_broker.bootstrap_servers, dlq, 1)
    assert len(dead) == 1
    assert "ValueError: negative legs: -1" in headers_of(dead[0])[REASON_HEADER]
    assert counter_value(runner, "events_filtered") == 1
