"""The broker is killed with SIGKILL mid-stream and restarted on the same port and data
while the step keeps running (issue #15): a Kafka-sink step still writes every id exactly
once under read_committed, and a window step with a Redis sink still gets every window
exact. Before, one record per run came out twice (12,001 for 12,000 ids): the worker
rejoined its group and re-read from the previous committed offset while its own last
transaction was still completing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port
from flowmill.local.redis import EmbeddedRedis
from flowmill.spec.topology import consumer_group, step_transactional_id
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability import stable_offsets
from flowmill_workers.runtime.durability.kafka_transaction import KafkaTransaction
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


async def test_a_restart_in_the_same_pod_fences_its_predecessor(
    kafka_broker: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the transactional id `{group}.{HOSTNAME}` buys (docs/reliability.md, "Zombie
    workers"): a worker restarted in the same pod (same HOSTNAME) takes over its
    predecessor's id, which aborts the predecessor's open transaction at once and fences
    it. A pod with a new name has a new id: the next test shows what fences it."""
    name = unique("samepod")
    kafka_broker.create_topics([(name, 1)])
    bootstrap = kafka_broker.bootstrap_servers

    def worker_id(hostname: str) -> str:
        monkeypatch.setenv("HOSTNAME", hostname)
        return KafkaTransaction(name, "copy", consumer_group(name, "copy"), None).transactional_id

    pod = "p-copy-5d9c7-x2kqw"
    assert worker_id(pod) == step_transactional_id(name, "copy", pod)
    assert worker_id("pod-b") != worker_id("pod-a")
    started: list[AIOKafkaProducer] = []

    async def producer(transactional_id: str) -> AIOKafkaProducer:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
        started.append(p)
        await p.start()
        return p

    try:
        zombie = await producer(worker_id("pod-a"))
        await zombie.begin_transaction()
        await (await zombie.send(name, b"fenced"))  # its batch's output, not committed
        await producer(worker_id("pod-a"))  # the worker restarted in its pod: InitProducerId
        with pytest.raises(KafkaError):
            await asyncio.wait_for(zombie.commit_transaction(), timeout=30)
        assert await consume_all(bootstrap, name, expected=0, timeout=0) == []
    finally:
        for p in started:
            with contextlib.suppress(KafkaError):
                await p.stop()


class FrozenWorker:
    """A StepRunner on an event loop of its own, in a thread, that freezes that loop
    inside its first batch: the outputs written and acknowledged (in its open
    transaction), the offsets not yet sent. A frozen loop sends no heartbeats and reads
    no socket, as a process under SIGSTOP; the rest of the test runs meanwhile."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner
        self.frozen, self.wake = threading.Event(), threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="zombie", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as err:  # reported by alive() and finish()
            self.error = err

    async def _run(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        runner = self.runner
        await runner.start()
        outputs = runner.durability.outputs
        send = outputs.send

        async def send_then_freeze(results: list[PartitionResult]) -> None:
            await send(results)
            if not self.frozen.is_set():
                self.frozen.set()
                self.wake.wait(60)  # blocks the whole loop (no await): nothing runs

        outputs.send = send_then_freeze  # type: ignore[method-assign]
        try:
            await runner.run(self.stop)
        finally:
            await runner.stop()

    def alive(self) -> None:
        assert self.thread.is_alive(), f"the zombie's loop ended: {self.error!r}"

    async def finish(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.wake.set()
        await asyncio.to_thread(self.thread.join, 60)
        assert not self.thread.is_alive(), "the zombie did not stop"
        assert self.error is None, f"the zombie failed: {self.error!r}"


async def test_a_zombie_under_a_new_pod_name_is_fenced_by_its_group_generation(
    kafka_broker: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of a Kafka-sink step freezes mid-transaction (its batch's outputs
    written, the offsets not yet added) longer than its session timeout; the group drops
    it and a worker in another pod (another transactional id, so no fencing by id) takes
    its partitions and writes every record. The zombie wakes well inside its 60 s
    transaction timeout and goes on to commit: its offsets carry the generation it was
    assigned in (TxnOffsetCommit v3), the group coordinator refuses them, the zombie
    aborts the batch and rejoins, and the two share the rest of the stream. Every id
    comes out exactly once under read_committed, and the two workers' written events
    add up to the ids: the zombie's aborted batch is not among them."""
    name = unique("zombie")
    out = f"{name}-out"
    p = pipeline(
        name, [{"name": name, "partitions": 2}, {"name": out, "partitions": 2}],
        [{"name": "copy", "from": name, "sink": {"kafka": {"topic": out}}}],
    )  # fmt: skip
    create_topics(kafka_broker, p)
    bootstrap = kafka_broker.bootstrap_servers
    first, second = 60, 60
    await produce(bootstrap, name, [{"id": i} for i in range(first)], key_field="id")
    config = WorkerConfig(bootstrap, batch_size=20)
    monkeypatch.setenv("HOSTNAME", "p-copy-5d9c7-aaaaa")
    zombie = FrozenWorker(StepRunner(p, "copy", config))
    monkeypatch.setenv("HOSTNAME", "p-copy-5d9c7-bbbbb")  # the replacement pod
    heir = StepRunner(p, "copy", config)
    assert heir.durability.transactional_id != zombie.runner.durability.transactional_id
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None

    async def until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            zombie.alive()
            if task is not None and task.done():
                task.result()
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
            await asyncio.sleep(0.05)

    zombie.thread.start()
    try:
        await until(zombie.frozen.is_set, "first batch of the zombie")
        await heir.start()
        task = asyncio.create_task(heir.run(stop))
        # The group waits for the zombie's session to expire (10 s), then gives the heir
        # both partitions from their committed offsets: none, so from the beginning.
        await until(lambda: counter_value(heir, "events_in") >= first, "heir catching up")
        zombie.wake.set()
        z = zombie.runner
        await until(lambda: counter_value(z, "batches_fenced") == 1, "fenced zombie batch")
        # Rejoined: revoked (+1) and assigned again (+1) after its first assignment.
        await until(lambda: z.rebalances >= 3 and not z.rebalancing, "zombie rejoining")
        await produce(bootstrap, name, [{"id": i} for i in range(first, first + second)],
                      key_field="id")  # fmt: skip
        records = await consume_all(bootstrap, out, first + second, timeout=60, settle=2.0)
        zombie.alive()
        assert not task.done(), f"the heir ended: {task}"
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, timeout=60)
        await heir.stop()
        await zombie.finish()
    ids = Counter(json.loads(r.value)["id"] for r in records)
    assert sorted(ids) == list(range(first + second)), "ids missing"
    twice = sorted(i for i, n in ids.items() if n > 1)
    assert twice == [], f"{len(twice)} id(s) written more than once: {twice[:10]}"
    written = counter_value(z, "events_in") + counter_value(heir, "events_in")
    assert written == first + second
    assert counter_value(z, "events_in") > 0, "the zombie took no part after rejoining"
    assert counter_value(z, "batches_fenced") == 1
