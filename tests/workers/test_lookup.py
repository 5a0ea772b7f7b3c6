"""Lookup joins on real Kafka: a reference topic and a latest-state table's input change
mid-stream (updates, tombstones, deletions, new keys), and every enriched event, dropped
event and dead letter equals what is computed here from the reference as it stood when
each batch of events was produced."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from flowmill.local.kafka import EmbeddedKafka
from flowmill_workers.runtime.dead_letter import REASON_HEADER
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import unique
from tests.workers.harness import consume_all, counter_value, create_topics, pipeline, produce

STATIONS = 12


async def send(bootstrap: str, topic: str, pairs: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Keyed records, None values as tombstones."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, None if v is None else json.dumps(v).encode(), key=k.encode()
            )
            for k, v in pairs
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def until(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def apply_tiers(tiers: dict[str, str], pairs: list[tuple[str, dict[str, Any] | None]]) -> None:
    for key, value in pairs:
        if value is None:
            tiers.pop(key, None)
        else:
            tiers[key] = value["tier"]


def apply_places(places: dict[str, str], infos: list[dict[str, Any]]) -> None:
    """The places step by hand: filter, map, keyBy, deleteWhen."""
    for info in infos:
        if info["kind"] == "test":
            continue
        if info["closed"]:
            places.pop(info["id"], None)
        else:
            places[info["id"]] = "Z-" + info["zone"]


async def test_lookup_follows_a_changing_reference(kafka_broker: EmbeddedKafka) -> None:
    name = unique("lookup")
    ref, info, trips = f"{name}-ref", f"{name}-info", f"{name}-trips"
    out_topic, out_table, dlq = f"{name}-by-topic", f"{name}-by-table", f"{name}-dlq"
    p = pipeline(
        name,
        [
            {"name": ref, "partitions": 2, "config": {"cleanup.policy": "compact"}},
            {"name": info, "partitions": 2},
            {"name": trips, "partitions": 2},
            {"name": out_topic},
            {"name": out_table},
            {"name": dlq},
        ],
        [
            {
                # The table the second lookup reads: its own filter, map and deleteWhen.
                "name": "places",
                "from": info,
                "filter": "kind != 'test'",
                "map": {"zone": "'Z-' + zone"},
                "keyBy": "id",
                "latest": {"fields": ["id", "zone"], "deleteWhen": "closed"},
                "sink": {"redis": {"table": "places"}},
            },
            {
                "name": "by-topic",
                "from": trips,
                "map": {"sid": "string(station)"},
                "lookup": {
                    "topic": ref,
                    "key": "sid",
                    "fields": ["tier"],
                    "prefix": "ref_",
                    "onMissing": "drop",
                },
                "sink": {"kafka": {"topic": out_topic, "key": "trip"}},
            },
            {
                "name": "by-table",
                "from": trips,
                "deadLetter": dlq,
                "map": {"sid": "string(station)"},
                "lookup": {"table": "places", "key": "sid", "onMissing": "deadLetter"},
                "sink": {"kafka": {"topic": out_table, "key": "trip"}},
            },
        ],
    )
    create_topics(kafka_broker, p)
    bootstrap = kafka_broker.bootstrap_servers
    runners = [StepRunner(p, s, WorkerConfig(bootstrap)) for s in ("by-topic", "by-table")]
    stop = asyncio.Event()
    for r in runners:
        await r.start()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        # Nothing is read while the references are empty; the readiness says why.
        await until("assigned", lambda: all(r.assigned_once for r in runners))
        assert [r.ready() for r in runners] == [
            (False, f"waiting for the lookup's topic {ref} to have records"),
            (False, "waiting for the lookup's table places to have records"),
        ]
        tiers: dict[str, str] = {}
        places: dict[str, str] = {}
        v1 = [(str(s), {"tier": f"t{s % 3}", "other": s}) for s in range(STATIONS) if s != 5]
        infos1 = [
            {"id": str(s), "zone": f"z{s % 4}", "kind": "real", "closed": False}
            for s in range(STATIONS)
            if s != 7
        ]
        await send(bootstrap, ref, v1)
        await produce(bootstrap, info, infos1, key_field="id")
        apply_tiers(tiers, v1)
        apply_places(places, infos1)
        await until("ready", lambda: all(r.ready()[0] for r in runners))

        expected_topic: list[dict[str, Any]] = []
        expected_table: list[dict[str, Any]] = []
        expected_dead: list[str] = []

        def expect(batch: list[dict[str, Any]]) -> None:
            # The reference as it stands now: what each event of the batch must see.
            for t in batch:
                sid = str(t["station"])
                if sid in tiers:
                    expected_topic.append({**t, "sid": sid, "ref_tier": tiers[sid]})
                if sid in places:
                    expected_table.append({**t, "sid": sid, "id": sid, "zone": places[sid]})
                else:
                    expected_dead.append(t["trip"])

        batch1 = [{"trip": f"a{i}", "station": i % (STATIONS + 1)} for i in range(60)]
        await produce(bootstrap, trips, batch1, key_field="trip")
        expect(batch1)
        await until(
            "batch 1 consumed", lambda: all(counter_value(r, "events_in") >= 60 for r in runners)
        )

        # The references change: updates, tombstones, new keys; for the table a
        # deletion (deleteWhen), a filtered record that changes nothing, a new station.
        v2: list[tuple[str, dict[str, Any] | None]] = [
            ("0", {"tier": "gold"}),
            ("1", None),
            ("5", {"tier": "new"}),
            ("2", None),
            ("2", {"tier": "back"}),
            ("3", {"tier": "x"}),
            ("3", {"tier": "y"}),
        ]
        infos2 = [
            {"id": "0", "zone": "moved", "kind": "real", "closed": False},
            {"id": "1", "zone": "z1", "kind": "real", "closed": True},
            {"id": "2", "zone": "ignored", "kind": "test", "closed": False},
            {"id": "7", "zone": "opened", "kind": "real", "closed": False},
        ]
        await send(bootstrap, ref, v2)
        await produce(bootstrap, info, infos2, key_field="id")
        apply_tiers(tiers, v2)
        apply_places(places, infos2)
        batch2 = [{"trip": f"b{i}", "station": i % (STATIONS + 1)} for i in range(60)]
        await produce(bootstrap, trips, batch2, key_field="trip")
        expect(batch2)
        await until(
            "batch 2 consumed", lambda: all(counter_value(r, "events_in") >= 120 for r in runners)
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for r in runners:
            await r.stop()

    def by_trip(records: list[Any]) -> dict[str, dict[str, Any]]:
        values = [json.loads(r.value) for r in records]
        assert len({v["trip"] for v in values}) == len(values), "an event was written twice"
        return {v["trip"]: v for v in values}

    got_topic = by_trip(await consume_all(bootstrap, out_topic, len(expected_topic)))
    got_table = by_trip(await consume_all(bootstrap, out_table, len(expected_table)))
    assert got_topic == {e["trip"]: e for e in expected_topic}
    assert got_table == {e["trip"]: e for e in expected_table}
    assert counter_value(runners[0], "events_filtered") == 120 - len(expected_topic)
    dead = await consume_all(bootstrap, dlq, len(expected_dead))
    assert sorted(json.loads(r.value)["trip"] for r in dead) == sorted(expected_dead)
    reasons = {dict(r.headers)[REASON_HEADER].decode() for r in dead}
    assert reasons == {
        f"lookup: table places has no entry for sid={s}"
        for s in {str(t["station"]) for t in batch1 + batch2 if t["trip"] in expected_dead}
    }
    # The change mid-stream mattered: both references were asked for keys whose entry
    # changed, so a lookup frozen at start would fail the comparisons above.
    assert got_topic["b0"]["ref_tier"] == "gold" and "b1" not in got_topic
    assert got_table["b0"]["zone"] == "Z-moved" and "b1" not in got_table
