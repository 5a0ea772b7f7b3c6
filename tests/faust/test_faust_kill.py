"""A Faust worker killed (SIGKILL) mid-stream under `flowmill run`, restarted by the run:
what the example's results are afterwards (docs/faust.md, "Guarantees").

Faust is at least once: events after the last offset commit are processed again, so
their flags are sent again (duplicates in fraud-flags), and their Table updates, which
the changelog may already hold, are applied again. The agent is written for that (a trip
already in the rider's history is re-evaluated against the trips before it), so the
test asserts: the distinct flags are exactly the expected ones (none lost, none wrong),
the duplicates are only repeats, the latest flag per rider is exact, and the restored
Table (its changelog) holds each rider's trips exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.spec import faust_changelog_topic
from tests.examples.harness import (
    api,
    example_copy,
    local_run,
    read_topic,
    row,
    source,
    step,
    table_path,
    topic,
    wait_consumed,
    wait_done,
    wait_matching,
)
from tests.faust.harness import expected_flags, valid_trips
from tests.faust.test_trip_fraud import fast_local
from tests.harness.waiting import wait_for

STALL_TIMEOUT_S = 15


def slow_local(doc: dict[str, Any]) -> None:
    fast_local(doc)
    # About 6 s of input, so the kill lands mid-stream.
    source(doc, "requests")["fileReplay"]["rate"] = 40
    # A restarted worker once stalled (ready, consuming nothing: docs/faust.md); the stall
    # watch ends that by another restart, sooner than its 60 s default here.
    step(doc, "fraud-rules")["faust"]["stallTimeout"] = f"{STALL_TIMEOUT_S}s"


def _flags(run: Any, bootstrap: str) -> list[tuple[str, str, str]]:
    out = read_topic(bootstrap, topic(run, "fraud-flags"))
    return [(r["event"]["rider_id"], r["event"]["trip_id"], r["event"]["rule"]) for r in out]


def test_killed_faust_worker_repeats_flags_but_loses_none(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    manifest = example_copy("trip-fraud", tmp_path, slow_local)
    trips = valid_trips()
    expected = expected_flags(trips)
    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        wait_consumed(run, "fraud-rules", 60)
        before = row(run, "step/fraud-rules")
        assert before.pid is not None and before.restarts == 0
        consumed_at_kill = before.events_in
        os.kill(before.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: row(run, "step/fraud-rules").restarts >= 1, 20, "the run restarted it")
        wait_done(run, ["requests"])
        bootstrap = kafka_broker.bootstrap_servers
        try:
            wait_for(
                lambda: set(_flags(run, bootstrap)) >= set(expected),
                # The restart joins after the killed member's 10 s session; a stalled one
                # is restarted after the stall timeout, and joins again.
                60 + 2 * STALL_TIMEOUT_S,
                "every flag after the kill",
            )
        finally:
            got = _flags(run, bootstrap)
            # What is missing, by input trip, says which events the restarted worker
            # never processed (see docs/faust.md, "Guarantees"); the group's commits
            # against the input's end tell records skipped from a worker stalled, and
            # the worker's log what it did after the restart.
            missing = set(expected) - set(got)
            print(f"flags missing after the kill: {missing}")
            if missing:
                rules = row(run, "step/fraud-rules")
                print(
                    f"worker: {rules.state}, {rules.events_in} events in, "
                    f"{rules.restarts} restart(s)"
                )
                print(f"input (end, committed): {_commits(run, bootstrap)}")
                print(Path(rules.log_path).read_text()[-6000:])
        print(f"every flag {time.monotonic() - killed:.1f} s after the kill")
        assert set(got) == set(expected), "no flag lost, none wrong"
        repeats = Counter(got) - Counter(expected)
        print(
            f"killed after {consumed_at_kill:.0f} events: {len(got)} flags for "
            f"{len(expected)} expected, {sum(repeats.values())} repeated"
        )
        # The latest flag per rider is exact: a replay re-sends a suffix, in order.
        last = {rider: {"trip_id": t, "rule": rule} for rider, t, rule in expected}
        with api(run) as http:
            entries = f"{table_path(run, 'flagged_riders')}/entries"

            def served() -> dict[Any, dict[str, Any]]:
                page = http.get(entries, params={"limit": 1000})
                if page.status_code != 200:
                    return {}
                return {
                    e["key"]: {"trip_id": e["value"]["trip_id"], "rule": e["value"]["rule"]}
                    for e in page.json()["entries"]
                }

            wait_matching("latest flag per rider", served, last, exact={"trip_id", "rule"})
        # The Table as a restarted worker restores it: each rider's trips once, in order.
        changelog = faust_changelog_topic(run.pipeline.name, "fraud-rules", "rider-trips")
        history: dict[str, list[str]] = {}
        for trip in trips:
            history.setdefault(trip["rider_id"], []).append(trip["trip_id"])
        wanted = {rider: ids[-20:] for rider, ids in history.items()}

        def restored() -> dict[str, list[str]]:
            latest: dict[str, list[str]] = {}
            for key, value in _raw_records(bootstrap, changelog):
                latest[key] = [t["trip_id"] for t in orjson.loads(value)]
            return latest

        table = wait_for(lambda: (t := restored()) == wanted and t, 30, "the Table exact")
        assert len(table) == 40


def _commits(run: Any, bootstrap: str) -> dict[int, tuple[int, int | None]]:
    """The Faust step's input partitions: (end offset, its group's committed offset)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from flowmill.spec import faust_app_id

    async def read() -> dict[int, tuple[int, int | None]]:
        group = faust_app_id(run.pipeline.name, "fraud-rules")
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        await consumer.start()
        try:
            name = topic(run, "trips-valid")
            await consumer._client.force_metadata_update()
            tps = [
                TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())
            ]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: (ends[tp], await consumer.committed(tp)) for tp in tps}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _raw_records(bootstrap: str, name: str) -> list[tuple[str, bytes]]:
    """(key, value) of every record of a topic, oldest first (Faust writes JSON keys)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[tuple[str, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(name) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(name) or set()
            tps = [TopicPartition(name, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[tuple[str, bytes]] = []
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(orjson.loads(r.key), r.value) for r in records if r.value is not None]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())
