"""Window records on a kafka sink (`sink.kafka.emit`), against plain Python over the same
events: each final window exactly once with kill -9 at random points, a minute -> hour
rollup of those records, `emit: updates`, and an idle partition (window.idleTimeout)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.spec import Pipeline
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import unique
from tests.workers.harness import (
    consume_all,
    create_topics,
    durable_events,
    kill_9_mid_stream,
    pipeline,
    produce,
    run_step,
    start_worker,
    stop_worker,
)
from tests.workers.test_step_windows import read_windows

# An hour boundary a day ago: the kill -9 test stamps records with their windows' starts,
# and a fixed date over a week old let the broker's retention (7 days, by record
# timestamp) delete the first records' segment mid-test.
BASE_MS = (lambda now: now - now % 3_600_000 - 24 * 3_600_000)(int(time.time() * 1000))
MIN, HOUR = 60_000, 3_600_000
Windows = dict[tuple[str, int], dict[str, float]]


def windows_of(events: list[dict[str, Any]], size_ms: int) -> Windows:
    """count, sum and max of `v` per key and window: what the steps below compute."""
    acc: dict[tuple[str, int], dict[str, float]] = defaultdict(
        lambda: {"n": 0, "total": 0.0, "hi": float("-inf")}
    )
    for e in events:
        a = acc[(e["k"], e["t"] - e["t"] % size_ms)]
        a["n"] += 1
        a["total"] += e["v"]
        a["hi"] = max(a["hi"], e["v"])
    return dict(acc)


def minute_step(name: str, table: str, out: str, emit: str, **window: Any) -> dict[str, Any]:
    return {
        "name": name,
        "from": "events",
        "keyBy": "k",
        "window": {"size": "1m", "eventTime": "t", **window},
        "aggregate": {"n": "count", "total": {"sum": "v"}, "hi": {"max": "v"}},
        "sink": {"redis": {"table": table}, "kafka": {"topic": out, "emit": emit}},
    }


def records_of(
    records: list[Any], stamp: str = "emitted", since_ms: int = 0
) -> list[dict[str, Any]]:
    """The records' values, each checked for its key and its timestamp (sink.kafka.timestamp:
    `emitted` is a time between `since_ms` and now)."""
    out = []
    now_ms = int(time.time() * 1000)
    for r in records:
        value = json.loads(r.value)
        assert r.key.decode() == value["k"], "a window record is keyed by its window's key"
        if stamp == "emitted":
            assert since_ms <= r.timestamp <= now_ms, (r.timestamp, since_ms, now_ms)
        else:
            assert r.timestamp == (value["start"] if stamp == "start" else value["end"] - 1)
        out.append(value)
    return out


def assert_records(records: list[dict[str, Any]], want: Windows, size_ms: int) -> None:
    """One final record per expected window, with its values, and nothing else."""
    seen = [(r["k"], r["start"]) for r in records]
    assert len(seen) == len(set(seen)), f"{len(seen) - len(set(seen))} window(s) twice"
    assert set(seen) == set(want), (
        sorted(set(seen) - set(want))[:5],
        sorted(set(want) - set(seen))[:5],
    )
    for r in records:
        w = want[(r["k"], r["start"])]
        assert r["end"] == r["start"] + size_ms
        assert (r["n"], r["hi"]) == (w["n"], w["hi"]), r
        assert r["total"] == pytest.approx(w["total"], rel=1e-12), r
        assert r["final"] is True and r["watermark"] >= r["end"], r


def _topics(*extra: tuple[str, int], partitions: int) -> list[dict[str, Any]]:
    return [{"name": "events", "partitions": partitions}] + [
        {"name": t, "partitions": n} for t, n in extra
    ]


def _rename(p: dict[str, Any], name: str) -> dict[str, Any]:
    """Topic names made unique per test (the session's broker is shared)."""
    text = json.dumps(p)
    for t in ("events", "minutes-out", "updates-out", "dlq"):
        text = text.replace(f'"{t}"', f'"{name}-{t}"')
    return json.loads(text)


def _pipeline(name: str, topics: list[dict[str, Any]], steps: list[dict[str, Any]]) -> Pipeline:
    renamed = _rename({"topics": topics, "steps": steps}, name)
    return pipeline(name, renamed["topics"], renamed["steps"])


async def test_final_windows_once_through_kill_9_and_an_hourly_rollup(
    kafka_broker: EmbeddedKafka,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    name = unique("emit")
    minutes = minute_step("minutes", "m", "minutes-out", "final")
    minutes["sink"]["kafka"]["timestamp"] = "start"
    p = _pipeline(
        name,
        _topics(("minutes-out", 1), partitions=2),
        [
            minutes,
            # The rollup reads the minute records: an hour's count is the sum of its
            # minutes' counts, its sum their sums, its max their maxima.
            {
                "name": "hours",
                "from": "minutes-out",
                "keyBy": "k",
                "window": {"size": "1h", "eventTime": "start"},
                "aggregate": {"n": {"sum": "n"}, "total": {"sum": "total"}, "hi": {"max": "hi"}},
                "sink": {"redis": {"table": "h"}},
            },
        ],
    )
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump(p.to_manifest()))
    create_topics(kafka_broker, p)
    rng = random.Random(12)
    n = 20_000  # enough that a worker at full speed is mid-stream at the kill
    events = [
        {"k": f"k{rng.randrange(8)}", "t": BASE_MS + i * 150 * MIN // n, "v": rng.randrange(1000)}
        for i in range(n)
    ]
    topic = f"{name}-events"
    bootstrap = kafka_broker.bootstrap_servers
    await produce(bootstrap, topic, events, key_field="k")
    # One event per partition hours later closes every window of the events above (the
    # table's watermark is the smaller of the two partitions'); its own stays open.
    for partition in (0, 1):
        flush = {"k": "flush", "t": BASE_MS + 10 * HOUR, "v": 0}
        await produce(bootstrap, topic, [flush], partition=partition)
    want = windows_of(events, MIN)

    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        return start_worker(manifest, "minutes", kafka_broker, redis_server.url, log, 100)

    # One kill: each costs the restarted worker a rebalance that waits out the killed
    # member's session (10 s); the outbox and the emitter are mid-stream by then.
    progress = lambda: durable_events(redis_client, name, "minutes")  # noqa: E731
    kills = kill_9_mid_stream(start, progress, random.Random(3), 1)
    assert kills[0] < n + 2, "finished before the kill"
    worker = start()
    try:
        got = await consume_all(bootstrap, f"{name}-minutes-out", len(want), timeout=90, settle=1.5)
    finally:
        stop_worker(worker, log)
    assert_records(records_of(got, "start"), want, MIN)

    await run_step(p, "hours", bootstrap, redis_server.url, len(want))
    hours = {
        k: {"n": w["n"], "total": w["total"], "hi": w["hi"]}
        for k, w in windows_of(events, HOUR).items()
    }
    served = read_windows(redis_client, name, "h")
    assert served.keys() == hours.keys()
    for key, w in hours.items():
        assert (served[key]["n"], served[key]["hi"]) == (w["n"], w["hi"]), key
        assert served[key]["total"] == pytest.approx(w["total"], rel=1e-12), key


@asynccontextmanager
async def _running(
    p: Pipeline, steps: list[str], bootstrap: str, redis_url: str
) -> AsyncIterator[None]:
    runners = [StepRunner(p, s, WorkerConfig(bootstrap, redis_url, batch_size=10)) for s in steps]
    for r in runners:
        await r.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        yield
        for t in tasks:
            assert not t.done(), t.result()
    finally:
        stop.set()
        for t in tasks:
            await t
        for r in runners:
            await r.stop()


async def test_idle_partitions_stop_holding_finals_and_updates(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("idle")
    final = minute_step("minutes", "f", "minutes-out", "final", idleTimeout="1s")
    final["deadLetter"] = "dlq"
    final["sink"]["kafka"]["timestamp"] = "end"
    updating = minute_step("updates", "u", "updates-out", "updates")
    updating["sink"]["kafka"]["timestamp"] = "emitted"
    p = _pipeline(
        name,
        _topics(("minutes-out", 1), ("updates-out", 1), ("dlq", 1), partitions=3),
        [final, updating],
    )
    began_ms = int(time.time() * 1000)
    create_topics(kafka_broker, p)
    bootstrap, topic = kafka_broker.bootstrap_servers, f"{name}-events"
    # Partition 0 only, one event every 6 s for 10 minutes: partitions 1 and 2 stay empty.
    events = [{"k": f"k{i % 3}", "t": BASE_MS + i * 6000, "v": i} for i in range(100)]
    await produce(bootstrap, topic, events, partition=0)
    want = windows_of(events, MIN)
    closed = {k: w for k, w in want.items() if k[1] + MIN <= events[-1]["t"]}
    assert len(closed) == 27  # minutes 0-8; minute 9 ends after the last event

    async with _running(p, ["minutes", "updates"], bootstrap, redis_server.url):
        # Without idleness no window could be final: two partitions have no watermark.
        got = await consume_all(bootstrap, f"{name}-minutes-out", 27, timeout=30)
        got = records_of(got, "end")
        assert_records(got, closed, MIN)
        # Raised to partition 0's watermark (maybe in steps, while it was still read).
        wms = [f"{topic}:{q}:wm".encode() for q in (0, 1, 2)]
        raised = [str(events[-1]["t"]).encode()] * 3
        deadline = time.monotonic() + 10
        while redis_client.hmget(serving.checkpoint_key(name, "minutes"), wms) != raised:
            assert time.monotonic() < deadline, redis_client.hmget(
                serving.checkpoint_key(name, "minutes"), wms
            )
            await asyncio.sleep(0.1)

        # An event an idle partition brings behind the raised watermark is late; one
        # after it makes that partition the one with events, and partition 0 (idle now)
        # is raised to it: minute 9 becomes final.
        late = {"k": "k0", "t": BASE_MS + 10_000, "v": 5}
        later = {"k": "k0", "t": BASE_MS + 700_000, "v": 7}
        await produce(bootstrap, topic, [late, later], partition=1)
        dead = await consume_all(bootstrap, f"{name}-dlq", 1, timeout=30)
        assert [json.loads(d.value) for d in dead] == [late]
        got = records_of(await consume_all(bootstrap, f"{name}-minutes-out", 30, timeout=30), "end")
        assert_records(got, {k: w for k, w in want.items() if k[1] < BASE_MS + 10 * MIN}, MIN)

        # emit updates: every change of a window, the last one per window its values
        # (this step has no idleTimeout, so nothing is late and nothing final here).
        everything = windows_of([*events, late, later], MIN)
        updates = records_of(
            await consume_all(bootstrap, f"{name}-updates-out", len(everything), timeout=30),
            "emitted",
            began_ms,
        )
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for u in updates:
        assert u["final"] is False and u["watermark"] is None  # two partitions never had events
        last[(u["k"], u["start"])] = u
    assert last.keys() == everything.keys()
    for key, w in everything.items():
        assert (last[key]["n"], last[key]["total"], last[key]["hi"]) == (
            w["n"],
            w["total"],
            w["hi"],
        )
    assert len(updates) > len(everything), "batches of 10 change most windows more than once"
