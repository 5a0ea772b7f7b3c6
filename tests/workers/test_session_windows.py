"""Session windows on real Kafka + Redis, checked against sessions computed here in plain
Python over the same events: out of order, late events that extend or join sessions
(also across partitions and batches), maxDuration cuts, and kill -9 at random points."""

from __future__ import annotations

import math
import random
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis
import yaml

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.harness.waiting import unique, wait_for
from tests.workers.harness import (
    create_topics,
    durable_events,
    kill_9_mid_stream,
    pipeline,
    produce,
    run_step,
    start_worker,
    stop_worker,
)

MIN = 60_000
BASE = 1_763_800_000_000 - 1_763_800_000_000 % (24 * 60 * MIN)  # midnight UTC
Sessions = dict[tuple[str, int], dict[str, float]]


def session_step(table: str, topic: str, **window: Any) -> dict[str, Any]:
    return {
        "name": "sessions",
        "from": topic,
        "keyBy": "user",
        "window": {"eventTime": "ts", "session": {"gap": "30m"}, **window},
        "aggregate": {
            "views": "count",
            "minutes": {"sum": "minutes"},
            "avg_minutes": {"avg": "minutes"},
            "shortest": {"min": "minutes"},
            "longest": {"max": "minutes"},
            "shows": {"distinct": "show"},
        },
        "sink": {"redis": {"table": table}},
    }


def accepted(arrivals: dict[int, list[dict[str, Any]]], lateness_ms: int) -> list[dict[str, Any]]:
    """The events a session step keeps: per partition, in arrival order, an event more
    than the lateness behind the largest time seen before it is late."""
    out = []
    for events in arrivals.values():
        watermark: int | None = None
        for e in events:
            if watermark is not None and e["ts"] < watermark - lateness_ms:
                continue
            out.append(e)
            watermark = e["ts"] if watermark is None else max(watermark, e["ts"])
    return out


def expected_sessions(
    events: list[dict[str, Any]], gap_ms: int, max_ms: int = 0
) -> dict[tuple[str, int], dict[str, Any]]:
    """(user, start) -> the session's last event and aggregates: a user's events sorted
    by time, cut where two are gap or more apart or cross a multiple of max_ms."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["user"]].append(e)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for user, evs in by_user.items():
        evs.sort(key=lambda e: e["ts"])
        runs: list[list[dict[str, Any]]] = []
        for e in evs:
            if runs:
                prev = runs[-1][-1]["ts"]
                same_period = not max_ms or prev // max_ms == e["ts"] // max_ms
                if e["ts"] - prev < gap_ms and same_period:
                    runs[-1].append(e)
                    continue
            runs.append([e])
        for run in runs:
            minutes = [e["minutes"] for e in run]
            out[(user, run[0]["ts"])] = {
                "last": run[-1]["ts"],
                "views": len(run),
                "minutes": sum(minutes),
                "avg_minutes": sum(minutes) / len(minutes),
                "shortest": min(minutes),
                "longest": max(minutes),
                "shows": len({e["show"] for e in run}),
            }
    return out


def read_sessions(client: redis.Redis, name: str, table: str) -> dict[tuple[str, int], Any]:
    out = {}
    for raw_key in client.zrange(serving.keys_key(name, table), 0, -1):
        key = raw_key.decode()
        for start in client.zrange(serving.window_index_key(name, table, key), 0, -1):
            h = {
                k.decode(): v.decode()
                for k, v in client.hgetall(serving.window_key(name, table, key, int(start))).items()
            }
            assert h, (key, start)
            out[(key, int(start))] = {
                k: float(v) for k, v in h.items() if not k.startswith("_") and k not in ("start",)
            }
    return out


def assert_sessions(actual: dict[Any, Any], expected: dict[Any, Any], gap_ms: int) -> None:
    assert sorted(actual) == sorted(expected)
    for k, want in expected.items():
        got = actual[k]
        assert got["last"] == want["last"] and got["end"] == want["last"] + gap_ms, k
        for field in ("views", "shows", "shortest", "longest"):
            assert got[field] == want[field], (k, field)
        for field in ("minutes", "avg_minutes"):
            assert math.isclose(got[field], want[field], rel_tol=1e-9), (k, field)


def viewing(n: int, seed: int, users: int = 12) -> list[dict[str, Any]]:
    """Views (about two a user an hour): per user, bursts separated by random pauses, some
    shorter and some longer than the 30-minute gap; then shuffled locally, so events
    arrive up to ~40 minutes out of order."""
    rng = random.Random(seed)
    events = []
    clock = {f"u{i}": BASE + rng.randrange(60) * MIN for i in range(users)}
    for i in range(n):
        user = f"u{rng.randrange(users)}"
        clock[user] += rng.choice([1, 5, 12, 20, 28, 33, 45, 90]) * MIN + rng.randrange(MIN)
        events.append(
            {
                "id": i,
                "user": user,
                "show": rng.choice(["dark", "fargo", "lost", "ozark"]),
                "minutes": round(rng.uniform(1, 60), 2),
                "ts": clock[user],
            }
        )
    events.sort(key=lambda e: e["ts"] + rng.uniform(0, 40 * MIN))
    return events


async def _feed(kafka: EmbeddedKafka, topic: str, arrivals: dict[int, list[Any]]) -> None:
    for partition, events in arrivals.items():
        await produce(kafka.bootstrap_servers, topic, events, partition=partition)


async def test_out_of_order_and_late_events_extend_and_join_sessions(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("sess")
    p = pipeline(
        name,
        [{"name": name, "partitions": 2}],
        [session_step("views", name, allowedLateness="45m")],
    )
    create_topics(kafka_broker, p)
    events = viewing(1500, seed=3)
    # One user's two sessions (0-10 min and 60-70 min) are joined by an event at 35 min
    # that arrives last, in the other partition and a later batch: within the lateness,
    # 25 minutes from both. Another late event (50 minutes behind) is dropped.
    bridge = max(e["ts"] for e in events) + 24 * 60 * MIN
    arrivals: dict[int, list[dict[str, Any]]] = {
        0: [e for e in events if e["id"] % 2 == 0],
        1: [e for e in events if e["id"] % 2 == 1],
    }

    def view(ts: int, i: int) -> dict[str, Any]:
        return {"id": -i, "user": "bridge", "show": "lost", "minutes": 10.0, "ts": ts}

    arrivals[0] += [view(bridge + m * MIN, i) for i, m in enumerate((0, 10, 60, 70), 1)]
    arrivals[1] += [view(bridge + 80 * MIN, 5)]
    arrivals[1] += [view(bridge + 35 * MIN, 6), view(bridge + 29 * MIN, 7)]
    await _feed(kafka_broker, name, arrivals)

    kept = accepted(arrivals, 45 * MIN)
    want = expected_sessions(kept, 30 * MIN)
    assert len(kept) < sum(map(len, arrivals.values())), "the data should have late events"
    assert want[("bridge", bridge)]["views"] == 6  # the bridge joined all but the late one
    total = sum(map(len, arrivals.values()))
    runner = await run_step(
        p, "sessions", kafka_broker.bootstrap_servers, redis_server.url, total, batch_size=100
    )
    assert_sessions(read_sessions(redis_client, name, "views"), want, 30 * MIN)
    late = runner.metrics.labels(runner.metrics.events_late)._value.get()
    assert late == total - len(kept)


async def test_max_duration_cuts_sessions_at_its_multiples(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("sessmax")
    p = pipeline(
        name,
        [{"name": name, "partitions": 1}],
        [
            session_step(
                "views", name, allowedLateness="3h", session={"gap": "30m", "maxDuration": "2h"}
            )
        ],
    )
    create_topics(kafka_broker, p)
    # Every 10 minutes for 7 hours, arriving reversed in blocks: the 2-hour cuts must
    # come out the same whatever the order.
    events = [
        {
            "id": i,
            "user": f"u{i % 2}",
            "show": "dark",
            "minutes": float(i % 7),
            "ts": BASE + i * 5 * MIN,
        }
        for i in range(84)
    ]
    arrivals = {0: [e for block in range(0, 84, 12) for e in reversed(events[block : block + 12])]}
    await _feed(kafka_broker, name, arrivals)
    want = expected_sessions(accepted(arrivals, 3 * 60 * MIN), 30 * MIN, 120 * MIN)
    assert len(want) == 8  # 2 users x 4 periods of 2 hours
    await run_step(
        p, "sessions", kafka_broker.bootstrap_servers, redis_server.url, 84, batch_size=7
    )
    assert_sessions(read_sessions(redis_client, name, "views"), want, 30 * MIN)


async def test_kill_9_at_random_points_keeps_sessions_exact(
    kafka_broker: EmbeddedKafka,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    name = unique("sesscrash")
    p = pipeline(
        name,
        [{"name": name, "partitions": 2}],
        [session_step("views", name, allowedLateness="45m")],
    )
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump(p.to_manifest()))
    create_topics(kafka_broker, p)
    events = viewing(12_000, seed=21, users=40)
    arrivals = {q: [e for e in events if e["id"] % 2 == q] for q in (0, 1)}
    await _feed(kafka_broker, name, arrivals)
    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        return start_worker(manifest, "sessions", kafka_broker, redis_server.url, log, 200)

    progress = lambda: durable_events(redis_client, name, "sessions")  # noqa: E731
    kills = kill_9_mid_stream(start, progress, random.Random(4), 2)
    assert kills[-1] < len(events), "finished before the last kill"
    worker = start()
    try:
        wait_for(lambda: progress() >= len(events), 90, "all events")
    finally:
        stop_worker(worker, log)
    want = expected_sessions(accepted(arrivals, 45 * MIN), 30 * MIN)
    assert_sessions(read_sessions(redis_client, name, "views"), want, 30 * MIN)
