"""Redis writes under faults: a batch is applied whole or not at all, a result Redis
cannot hold (a sum overflowing to infinity) marks its window instead of crash-looping
the worker, and a write Redis refuses (maxmemory) is retried until it lands, the worker
unready meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.runtime.durability import WriteRetry
from flowmill_workers.runtime.durability.redis_checkpoint import RedisWriteFailed
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import unique
from tests.workers.harness import (
    consume_all,
    counter_value,
    create_topics,
    pipeline,
    produce,
)

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % 60_000


def sum_step(topic: str, table: str) -> dict[str, Any]:
    return {
        "name": "sums",
        "from": topic,
        "keyBy": "k",
        "window": {"size": "1m", "eventTime": "t"},
        "aggregate": {"n": "count", "total": {"sum": "v"}, "mean": {"avg": "v"}},
        "sink": {"redis": {"table": table}},
    }


async def until(ok: Any, what: str, task: asyncio.Task[None], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.05)


def window(client: redis.Redis, name: str, key: str, start: int) -> dict[str, str]:
    raw = client.hgetall(serving.window_key(name, "t", key, start))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_overflowing_sum_marks_its_window_and_counts_stay_exact(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The issue's case: two finite values of 1.5e308 in one window overflow the sum.
    Before, the script failed half-way, the worker crash-looped and every replay added
    the batch again (k0's count 100 -> 200 -> ...). Now k0's count is 100, its sum and
    mean are marked as overflowed (not served), and every other window is exact."""
    name = unique("overflow")
    p = pipeline(name, [{"name": name, "partitions": 1}], [sum_step(name, "t")])
    create_topics(kafka_broker, p)
    events: list[dict[str, Any]] = []
    for i in range(400):
        key = f"k{i % 4}"
        v = 1.5e308 if key == "k0" and i in (0, 4) else float(i)
        events.append({"k": key, "t": BASE_MS + i, "v": v})
    # A second batch later adds to k1 so that its stored sum overflows across batches.
    later = [
        {"k": "k1", "t": BASE_MS + 500, "v": 1.7e308},
        {"k": "k1", "t": BASE_MS + 501, "v": 1.7e308},
    ]
    await produce(kafka_broker.bootstrap_servers, name, events)
    runner = StepRunner(p, "sums", WorkerConfig(kafka_broker.bootstrap_servers, redis_server.url))
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    checkpoint = serving.checkpoint_key(name, "sums")
    try:
        await until(lambda: redis_client.hget(checkpoint, f"{name}:0") == b"400", "400", task)
        await produce(kafka_broker.bootstrap_servers, name, later[:1])
        await until(lambda: redis_client.hget(checkpoint, f"{name}:0") == b"401", "401", task)
        await produce(kafka_broker.bootstrap_servers, name, later[1:])
        await until(lambda: redis_client.hget(checkpoint, f"{name}:0") == b"402", "402", task)
        await asyncio.sleep(1.0)  # a crash-looping or replaying worker would show by now
        assert not task.done()
    finally:
        stop.set()
        await task
        await runner.stop()
    # total and mean of k0 (overflowed in the batch) and of k1 (in Redis, across batches)
    assert counter_value(runner, "windows_invalid") == 4
    k0 = window(redis_client, name, "k0", BASE_MS)
    assert k0["n"] == "100"
    assert "total" not in k0 and "mean" not in k0
    assert "overflow" in k0["_error:total"] and "overflow" in k0["_error:mean"]
    k1 = window(redis_client, name, "k1", BASE_MS)
    assert k1["n"] == "102" and "total" not in k1 and "overflow" in k1["_error:total"]
    for k in ("k2", "k3"):
        values = [e["v"] for e in events if e["k"] == k]
        w = window(redis_client, name, k, BASE_MS)
        assert int(w["n"]) == len(values) == 100
        assert float(w["total"]) == sum(values)
        assert float(w["mean"]) == sum(values) / len(values)
        assert "_error:total" not in w
    # The overflowed window is not ranked on that aggregate.
    top = redis_client.zrange(serving.top_key(name, "t", BASE_MS, "total"), 0, -1)
    assert sorted(top) == [b"k2", b"k3"]


def latest_step(topic: str, dead: str | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": "last",
        "from": topic,
        "keyBy": "id",
        "latest": {},
        "sink": {"redis": {"table": "t"}},
    }
    if dead:
        step["deadLetter"] = dead
    return step


async def start(p: Any, step: str, config: WorkerConfig) -> tuple[StepRunner, asyncio.Event, Any]:
    runner = StepRunner(p, step, config)
    await runner.start()
    stop = asyncio.Event()
    return runner, stop, asyncio.create_task(runner.run(stop))


async def finish(runner: StepRunner, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task
    await runner.stop()


async def test_a_refused_final_write_is_retried_and_the_step_unready_meanwhile(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Redis refuses the last batch (maxmemory): the worker says so at once (unready, with
    the reason), keeps retrying, and once memory is freed every event is there."""
    name = unique("oom")
    p = pipeline(name, [{"name": name, "partitions": 1}], [latest_step(name)])
    create_topics(kafka_broker, p)
    checkpoint, field = serving.checkpoint_key(name, "last"), f"{name}:0"
    bootstrap = kafka_broker.bootstrap_servers
    runner, stop, task = await start(p, "last", WorkerConfig(bootstrap, redis_server.url))
    try:
        await produce(bootstrap, name, [{"id": i} for i in range(100)])
        await until(lambda: redis_client.hget(checkpoint, field) == b"100", "100", task)
        assert runner.ready()[0]
        redis_client.config_set("maxmemory", "1")
        try:
            await produce(bootstrap, name, [{"id": i} for i in range(100, 110)])
            await until(lambda: not runner.ready()[0], "unready", task, timeout=10)
            assert "maxmemory" in runner.ready()[1]
            await asyncio.sleep(2.0)
            assert redis_client.hget(checkpoint, field) == b"100"
            assert not task.done()
        finally:
            redis_client.config_set("maxmemory", "0")
        await until(lambda: redis_client.hget(checkpoint, field) == b"110", "110", task)
        await until(lambda: runner.ready()[0], "ready again", task, timeout=10)
    finally:
        await finish(runner, stop, task)
    assert counter_value(runner, "write_retries") > 0
    applied = redis_client.hkeys(serving.latest_key(name, "t"))
    assert sorted(int(k) for k in applied) == list(range(110))


async def test_a_write_refused_for_too_long_ends_the_worker(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Past WriteRetry.give_up_s the step's run() raises (the worker exits non-zero and
    Kubernetes restarts it), instead of sitting on a batch it cannot write."""
    name = unique("oom-exit")
    p = pipeline(name, [{"name": name, "partitions": 1}], [latest_step(name)])
    create_topics(kafka_broker, p)
    config = WorkerConfig(
        kafka_broker.bootstrap_servers, redis_server.url, write_retry=WriteRetry(give_up_s=1.5)
    )
    runner, stop, task = await start(p, "last", config)
    try:
        await until(lambda: runner.ready()[0], "an assignment", task)
        redis_client.config_set("maxmemory", "1")
        try:
            await produce(kafka_broker.bootstrap_servers, name, [{"id": 1}])
            began = time.monotonic()
            with pytest.raises(RedisWriteFailed, match="maxmemory"):
                await asyncio.wait_for(asyncio.shield(task), timeout=20)
            assert time.monotonic() - began < 15
        finally:
            redis_client.config_set("maxmemory", "0")
    finally:
        stop.set()
        await runner.stop()


async def test_a_batch_failing_deterministically_is_dead_lettered_after_n_tries(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A key of the table holds a foreign value (a string where the window hash goes):
    the script fails before it writes, every time. After 3 tries the batch goes to the
    dead-letter topic with the error, the checkpoint moves past it, the next batches
    are applied, and nothing was applied twice."""
    name = unique("wrongtype")
    dead = f"{name}-dead"
    step = {**sum_step(name, "t"), "deadLetter": dead}
    p = pipeline(name, [{"name": name, "partitions": 1}, {"name": dead, "partitions": 1}], [step])
    create_topics(kafka_broker, p)
    redis_client.set(serving.window_key(name, "t", "k0", BASE_MS), "foreign")
    bad = [{"k": f"k{i % 2}", "t": BASE_MS + i, "v": 1.0} for i in range(50)]
    good = [{"k": "k1", "t": BASE_MS + 60_000 + i, "v": 2.0} for i in range(30)]
    bootstrap = kafka_broker.bootstrap_servers
    config = WorkerConfig(
        bootstrap, redis_server.url, write_retry=WriteRetry(attempts=3, first_backoff_s=0.05)
    )
    checkpoint, field = serving.checkpoint_key(name, "sums"), f"{name}:0"
    await produce(bootstrap, name, bad)
    runner, stop, task = await start(p, "sums", config)
    try:
        await until(lambda: redis_client.hget(checkpoint, field) == b"50", "50", task)
        await produce(bootstrap, name, good)
        await until(lambda: redis_client.hget(checkpoint, field) == b"80", "80", task)
    finally:
        await finish(runner, stop, task)
    letters = await consume_all(bootstrap, dead, expected=50)
    assert sorted(r.offset for r in letters) == list(range(50))
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert "failed 3 times" in headers["flowmill-reason"]
    assert "WRONGTYPE" in headers["flowmill-reason"]
    assert counter_value(runner, "batches_dead_lettered") == 1
    assert redis_client.get(serving.window_key(name, "t", "k0", BASE_MS)) == b"foreign"
    assert window(redis_client, name, "k1", BASE_MS) == {}  # the dead batch: not applied
    w = window(redis_client, name, "k1", BASE_MS + 60_000)
    assert w["n"] == "30" and float(w["total"]) == 60.0
