"""The seam between the step loop and its durability strategies: which strategy a step
gets, and a refused (fenced) Redis write resuming from the checkpoint on real Kafka and
Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.runtime.durability import (
    KafkaTransaction,
    OffsetCommit,
    ParquetFiles,
    RedisCheckpoint,
)
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, pipeline, produce
from tests.workers.test_step_windows import (
    assert_same,
    expected_windows,
    read_windows,
    trip_events,
    window_spec,
)

TOPICS = [{"name": "in"}, {"name": "other"}, {"name": "out"}]


def runner_for(step: dict[str, Any], redis_url: str | None = None) -> StepRunner:
    p = pipeline("seam", TOPICS, [{"name": "s", "from": "in", **step}])
    return StepRunner(p, "s", WorkerConfig("127.0.0.1:1", redis_url))


def test_each_sink_gets_its_strategy(tmp_path: Path) -> None:
    kafka = runner_for({"sink": {"kafka": {"topic": "out"}}}).durability
    assert isinstance(kafka, KafkaTransaction)
    assert kafka.transactional_id is not None and kafka.transactional_id.startswith(
        "flowmill.seam.s."
    )
    assert not kafka.pipelined

    table = {"keyBy": "id", "latest": {}, "sink": {"redis": {"table": "t"}}}
    fenced = runner_for(table, "redis://127.0.0.1:1").durability
    assert isinstance(fenced, RedisCheckpoint)
    assert fenced.pipelined and fenced.transactional_id is None
    both = {**table, "sink": {"redis": {"table": "t"}, "kafka": {"topic": "out"}}}
    assert isinstance(runner_for(both, "redis://127.0.0.1:1").durability, RedisCheckpoint)

    lake = runner_for({"sink": {"parquet": {"path": str(tmp_path)}}}).durability
    assert isinstance(lake, ParquetFiles) and not lake.pipelined

    assert isinstance(runner_for({"filter": "x > 1"}).durability, OffsetCommit)

    join = {"correlate": {"with": "other", "key": "id", "timeout": "1m"}}
    joined = runner_for({**join, "sink": {"kafka": {"topic": "out"}}}).durability
    assert isinstance(joined, KafkaTransaction) and joined.changelog is not None
    assert isinstance(runner_for(join).durability, KafkaTransaction)


def test_steps_the_strategies_cannot_make_exact_are_refused() -> None:
    with pytest.raises(ValueError, match="no Redis URL"):
        runner_for({"keyBy": "id", "latest": {}, "sink": {"redis": {"table": "t"}}})
    join = {"correlate": {"with": "other", "key": "id", "timeout": "1m"}, "keyBy": "id"}
    with pytest.raises(ValueError, match="join's sink must be a Kafka topic"):
        runner_for({**join, "latest": {}, "sink": {"redis": {"table": "t"}}}, "redis://x")


async def test_a_refused_write_resumes_from_the_checkpoint(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Another worker (played by the test) moves the checkpoint to `ahead` after this
    one took the partition: its batch from offset 0 is refused, it continues at `ahead`,
    and the offsets before `ahead` are never applied by it."""
    name = unique("fence")
    p = pipeline(
        name,
        [{"name": name, "partitions": 1}],
        [
            {
                "name": "last",
                "from": name,
                "keyBy": "id",
                "latest": {},
                "sink": {"redis": {"table": "t"}},
            }
        ],
    )
    create_topics(kafka_broker, p)
    runner = StepRunner(p, "last", WorkerConfig(kafka_broker.bootstrap_servers, redis_server.url))
    checkpoint, field = serving.checkpoint_key(name, "last"), f"{name}:0"
    total, ahead = 300, 120
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await until(lambda: runner.ready()[0], "an assignment", task)
        redis_client.hset(checkpoint, field, ahead)
        await produce(kafka_broker.bootstrap_servers, name, [{"id": i} for i in range(total)])
        await until(
            lambda: redis_client.hget(checkpoint, field) == str(total).encode(),
            f"checkpoint at {total}",
            task,
        )
    finally:
        stop.set()
        await task
        await runner.stop()
    applied = redis_client.hkeys(serving.latest_key(name, "t"))
    assert sorted(int(k) for k in applied) == list(range(ahead, total))


async def test_a_refused_merged_window_write_is_written_partition_by_partition(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A window step writes its partitions' merged partials with one script that every
    partition's checkpoint must fence in. Another worker (the test) moved partition 1's
    checkpoint to `ahead`: that script is refused whole, each partition is then written
    alone, so partitions 0 and 2 are applied in full and partition 1 from `ahead` on."""
    name = unique("mfence")
    p = pipeline(name, [{"name": name, "partitions": 3}], [window_spec("regions", name)])
    create_topics(kafka_broker, p)
    runner = StepRunner(
        p, "by-region", WorkerConfig(kafka_broker.bootstrap_servers, redis_server.url)
    )
    checkpoint = serving.checkpoint_key(name, "by-region")
    events = trip_events(900, seed=6)
    parts = [events[i::3] for i in range(3)]
    ahead = 120
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await until(lambda: runner.ready()[0], "an assignment", task)
        redis_client.hset(checkpoint, f"{name}:1", ahead)
        for i, part in enumerate(parts):
            await produce(kafka_broker.bootstrap_servers, name, part, partition=i)
        await until(
            lambda: all(
                redis_client.hget(checkpoint, f"{name}:{i}") == str(len(part)).encode()
                for i, part in enumerate(parts)
            ),
            "every checkpoint at its partition's end",
            task,
        )
    finally:
        stop.set()
        await task
        await runner.stop()
    applied = parts[0] + parts[1][ahead:] + parts[2]
    assert_same(read_windows(redis_client, name, "regions"), expected_windows(applied, 60_000))


async def until(
    ok: Callable[[], object], what: str, task: asyncio.Task[None], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.05)
