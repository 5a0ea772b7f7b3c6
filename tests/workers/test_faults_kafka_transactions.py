"""The broker is killed with SIGKILL mid-stream and restarted on the same port and data
while the step keeps running (issue #15): a Kafka-sink step still writes every id exactly
once under read_committed, and a window step with a Redis sink still gets every window
exact. Before, one record per run came out twice (12,001 for 12,000 ids): the worker
rejoined its group and re-read from the previous committed offset while its own last
transaction was still completing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port
from flowmill.local.redis import EmbeddedRedis
from flowmill.spec.topology import consumer_group
from flowmill_workers.runtime.durability import stable_offsets
from flowmill_workers.runtime.durability.stable_offsets import OffsetsNotStable, stable_committed
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import unique
from tests.workers.harness import consume_all, counter_value, create_topics, pipeline, produce
from tests.workers.test_faults_redis_state import events, expected, processed, step, stored

IDS, PARTITIONS = 12_000, 3
RECOVERY_TIMEOUT = 240.0
"""The broker's restart after a crash (log recovery, the transaction and group state
reloaded) and the rest of the stream, on two shared cores."""


@pytest.fixture
def own_broker(tmp_path: Path, kafka_installed: str) -> Iterator[EmbeddedKafka]:
    """A broker of this test's own, on a fixed port and data dir so it can be killed and
    come back as the same broker."""
    broker = EmbeddedKafka(data_dir=tmp_path / "kafka", port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def crash_and_restart(broker: EmbeddedKafka, runner: StepRunner, after: int) -> None:
    """Once the step has consumed `after` events, SIGKILL the broker (a batch is being
    written at almost any moment, so a transaction is open or committing) and start it
    again. The restart runs in a thread: the step's loop keeps running meanwhile, as a
    pod's would, retrying against a broker that is gone and then recovering."""
    deadline = time.monotonic() + 60
    while counter_value(runner, "events_in") < after:
        assert time.monotonic() < deadline, f"the step consumed fewer than {after} events"
        await asyncio.sleep(0.005)
    bootstrap = broker.bootstrap_servers
    broker.kill()
    await asyncio.to_thread(broker.start)
    assert broker.bootstrap_servers == bootstrap


async def test_kafka_sink_writes_every_id_once_across_a_broker_kill_9(
    own_broker: EmbeddedKafka,
) -> None:
    name = unique("txn")
    out = f"{name}-out"
    p = pipeline(
        name,
        [{"name": name, "partitions": PARTITIONS}, {"name": out, "partitions": PARTITIONS}],
        [{"name": "copy", "from": name, "sink": {"kafka": {"topic": out}}}],
    )
    create_topics(own_broker, p)
    bootstrap = own_broker.bootstrap_servers
    await produce(bootstrap, name, [{"id": i} for i in range(IDS)], key_field="id")
    # Small batches: many transactions, so the kill lands inside one.
    runner = StepRunner(p, "copy", WorkerConfig(bootstrap, batch_size=100))
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await crash_and_restart(own_broker, runner, IDS // 4)
        assert not task.done(), f"the step ended during the broker's restart: {task}"
        records = await consume_all(bootstrap, out, IDS, timeout=RECOVERY_TIMEOUT, settle=5.0)
        assert not task.done(), f"the step ended after the broker's restart: {task}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
        await runner.stop()
    ids = Counter(json.loads(r.value)["id"] for r in records)
    twice = sorted(i for i, n in ids.items() if n > 1)
    assert twice == [], f"{len(twice)} id(s) written more than once: {twice[:10]}"
    missing = sorted(set(range(IDS)) - set(ids))
    assert missing == [], f"{len(missing)} of {IDS} id(s) never written: {missing[:10]}"
    assert len(records) == IDS


async def test_window_step_stays_exact_across_a_broker_kill_9(
    own_broker: EmbeddedKafka, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    name = unique("winkill")
    p = pipeline(name, [{"name": name, "partitions": PARTITIONS}], [step(name)])
    create_topics(own_broker, p)
    evs = events()
    bootstrap = own_broker.bootstrap_servers
    await produce(bootstrap, name, evs, key_field="k")
    runner = StepRunner(p, "sums", WorkerConfig(bootstrap, redis_server.url, batch_size=100))
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await crash_and_restart(own_broker, runner, len(evs) // 4)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        # The checkpoints hold each partition's next offset: all consumed when they sum to
        # the number of events (the input is not transactional, so offsets are dense).
        while processed(redis_client, name) < len(evs):
            assert not task.done(), f"the step ended: {task}"
            assert time.monotonic() < deadline, (
                f"the step reached {processed(redis_client, name)} of {len(evs)} offsets "
                f"within {RECOVERY_TIMEOUT:.0f}s of the restart"
            )
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
        await runner.stop()
    want = expected(evs)
    got = stored(redis_client, name)
    wrong = sorted(k for k in want if got.get(k) != want[k])
    assert wrong == [], f"{len(wrong)} of {len(want)} window(s) wrong, e.g. {wrong[:5]}"
    assert sorted(got) == sorted(want)


async def test_offsets_a_transaction_is_committing_are_not_read_before_it_ends(
    kafka_broker: EmbeddedKafka,
) -> None:
    """The hazard itself, without a crash: while a transaction holds a group's offsets, a
    plain OffsetFetch (aiokafka's committed()) returns the offset from before it, which a
    worker resuming there would re-read; the stable fetch waits for the transaction."""
    name = unique("stable")
    group = f"{name}-group"
    kafka_broker.create_topics([(name, 1)])
    tp = TopicPartition(name, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap_servers, transactional_id=f"{name}-txn"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap_servers, group_id=group,
        enable_auto_commit=False, isolation_level="read_committed",
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    try:
        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(5, "")}, group)
        assert await consumer.committed(tp) is None
        with pytest.raises(OffsetsNotStable, match="not stable within 2s"):
            await stable_committed(consumer, group, [tp], timeout=2)
        waiting = asyncio.create_task(stable_committed(consumer, group, [tp]))
        await producer.commit_transaction()
        assert await asyncio.wait_for(waiting, timeout=30) == {tp: 5}
    finally:
        await consumer.stop()
        await producer.stop()


async def test_offsets_that_never_settle_end_the_step(
    kafka_broker: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that keeps the step's offsets pending beyond the bound: the step
    does not read the partition from an unsettled offset, and run() raises (the worker
    exits, Kubernetes restarts it), although aiokafka only logs a listener's error."""
    name = unique("unsettled")
    out = f"{name}-out"
    p = pipeline(
        name, [{"name": name}, {"name": out}],
        [{"name": "copy", "from": name, "sink": {"kafka": {"topic": out}}}],
    )  # fmt: skip
    create_topics(kafka_broker, p)
    bootstrap = kafka_broker.bootstrap_servers
    await produce(bootstrap, name, [{"id": i} for i in range(10)])
    monkeypatch.setattr(stable_offsets, "STABLE_TIMEOUT", 3.0)
    foreign = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{name}-other")
    await foreign.start()
    try:
        await foreign.begin_transaction()
        group = consumer_group(p.name, "copy")
        await foreign.send_offsets_to_transaction({TopicPartition(name, 0): 4}, group)
        runner = StepRunner(p, "copy", WorkerConfig(bootstrap))
        await runner.start()
        try:
            with pytest.raises(OffsetsNotStable, match="not stable within 3s"):
                await asyncio.wait_for(runner.run(asyncio.Event()), timeout=60)
            assert counter_value(runner, "events_in") == 0
        finally:
            await runner.stop()
        await foreign.abort_transaction()
    finally:
        await foreign.stop()
