"""A chain of three steps, each its own worker process, killed with SIGKILL at random while
events flow (issue #15): source topic -> `clean` (filter and map, Kafka sink) -> `enrich`
(map, Kafka sink) -> `sums` (windows into Redis). Every id reaches each intermediate topic
once (read_committed) and every window is exact. The kills come from a seeded random:
the seed is printed, and FLOWMILL_FAULT_SEED=<seed> replays the same choices."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.harness.waiting import unique
from tests.workers.harness import consume_all, create_topics, pipeline
from tests.workers.test_faults_rebalance import Feeder, WorkerProcess, Workers
from tests.workers.test_faults_redis_state import stored

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % 60_000
EVENTS, KEYS, MINUTES, PARTITIONS = 6_000, 10, 20, 3  # 200 windows
KILLS = 4
STEPS = ("clean", "enrich", "sums")
TIMEOUT = 120.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.stop_all()


def chain_events() -> list[dict[str, Any]]:
    return [
        {"id": i, "k": f"k{i % KEYS}", "t": BASE_MS + (i * MINUTES * 60_000) // EVENTS,
         "v": i % 97}
        for i in range(EVENTS)
    ]  # fmt: skip


def expected(evs: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, float]]:
    """What `sums` must hold, computed from the source events: the events `clean` keeps
    (v >= 10), each with u = 2v + 1 by the two maps."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for e in evs:
        if e["v"] >= 10:
            a = acc[(e["k"], e["t"] - e["t"] % 60_000)]
            a[0] += 1
            a[1] += 2 * e["v"] + 1
    return {k: (int(n), s) for k, (n, s) in acc.items()}


def chain(name: str) -> list[dict[str, Any]]:
    mid1, mid2 = f"{name}-clean", f"{name}-enriched"
    return [
        {"name": "clean", "from": name, "filter": "v >= 10", "map": {"w": "v * 2"},
         "keyBy": "k", "sink": {"kafka": {"topic": mid1}}},
        {"name": "enrich", "from": mid1, "map": {"u": "w + 1"}, "keyBy": "k",
         "sink": {"kafka": {"topic": mid2}}},
        {"name": "sums", "from": mid2, "keyBy": "k",
         "window": {"size": "1m", "eventTime": "t", "retain": 100},
         "aggregate": {"n": "count", "total": {"sum": "u"}}, "sink": {"redis": {"table": "t"}}},
    ]  # fmt: skip


async def wait_until(ok: Any, what: str, workers: Workers, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(ok):
        workers.all_alive()
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        await asyncio.sleep(0.1)


async def test_a_chain_of_three_steps_stays_exact_under_random_kill_9s(
    kafka_broker: EmbeddedKafka,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    workers: Workers,
) -> None:
    seed = int(os.environ.get("FLOWMILL_FAULT_SEED") or random.randrange(1 << 32))
    print(f"chain fault seed: {seed} (FLOWMILL_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    name = unique("chain")
    mid1, mid2 = f"{name}-clean", f"{name}-enriched"
    topics = [{"name": t, "partitions": PARTITIONS} for t in (name, mid1, mid2)]
    p = pipeline(name, topics, chain(name))
    create_topics(kafka_broker, p)
    bootstrap = kafka_broker.bootstrap_servers
    workers.use(p, "--bootstrap-servers", bootstrap, "--redis-url", redis_server.url)
    evs = chain_events()
    running: dict[str, WorkerProcess] = {s: workers.start(s) for s in STEPS}
    # Each step is killed at least once, then at random; each kill lands once the victim
    # has its partitions back from the previous one, at a random moment after that.
    victims = [*rng.sample(STEPS, len(STEPS)), *rng.choices(STEPS, k=KILLS - len(STEPS))]
    delays = [rng.uniform(0.0, 1.5) for _ in victims]
    kills: list[str] = []
    async with Feeder(bootstrap, name, evs, "k", workers) as feeder:
        await feeder.send(EVENTS // 10)
        kills_over = asyncio.Event()
        feeding = asyncio.create_task(
            feeder.send_until(kills_over.is_set, "the kills", EVENTS, timeout=TIMEOUT)
        )
        for victim, delay in zip(victims, delays, strict=True):
            await wait_until(running[victim].owns_partitions, f"{victim} assigned", workers)
            await asyncio.sleep(delay)  # the random point of the kill
            running[victim].kill_9()
            kills.append(f"{victim} at {feeder.sent} sent")
            running[victim] = workers.start(victim, restarting=running[victim])
        kills_over.set()
        await feeding
        await feeder.send(EVENTS - feeder.sent)
    print("kills:", "; ".join(kills))
    want = expected(evs)
    await wait_until(lambda: stored(redis_client, name) == want, "exact windows", workers)
    for worker in running.values():
        assert worker.stop() == 0, worker.log.read_text()[-3000:]

    kept = sorted(e["id"] for e in evs if e["v"] >= 10)
    for topic in (mid1, mid2):
        records = await consume_all(bootstrap, topic, len(kept), timeout=30, settle=1.0)
        ids = Counter(json.loads(r.value)["id"] for r in records)
        twice = sorted(i for i, n in ids.items() if n > 1)
        assert twice == [], f"seed {seed}: {len(twice)} id(s) twice in {topic}: {twice[:10]}"
        assert sorted(ids) == kept, f"seed {seed}: {topic} misses ids"
    got = stored(redis_client, name)
    wrong = sorted(k for k in want if got.get(k) != want[k])
    assert wrong == [], f"seed {seed}: {len(wrong)} of {len(want)} window(s) wrong: {wrong[:5]}"
    assert got == want
