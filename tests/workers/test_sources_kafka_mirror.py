"""kafka source: an existing topic is mirrored into a Pipeline topic with keys, values and
timestamps preserved, offsets committed, and a restart copying only what is new."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flowmill.local.kafka import EmbeddedKafka
from flowmill.spec import Pipeline, mirror_group
from flowmill_workers.runtime.source_runner import SourceConfig, SourceRunner
from flowmill_workers.sources.base import SourceContext
from flowmill_workers.sources.kafka_mirror import KafkaMirror
from tests.harness.waiting import unique
from tests.workers.test_sources_support import RunningSource, consume, source_pipeline

PARTITIONS = 3

Message = tuple[bytes | None, bytes, int]


async def produce(bootstrap: str, topic: str, messages: list[Message]) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        futures = [
            await producer.send(topic, value, key=key, timestamp_ms=ts)
            for key, value, ts in messages
        ]
        for future in futures:
            await future


def messages(start: int, count: int) -> list[Message]:
    out: list[Message] = []
    for i in range(start, start + count):
        key = f"vehicle-{i % 11}".encode() if i % 10 else None
        value = json.dumps({"i": i, "speed": i % 90}).encode() if i % 25 else b"not json \xff"
        out.append((key, value, 1_700_000_000_000 + i))
    return out


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def mirror_until(
    p: Pipeline, bootstrap: str, written: int, offsets_in_transaction: bool
) -> None:
    """Run the mirror in this process until it wrote `written` records, then stop it."""
    runner = SourceRunner(p, "upstream", SourceConfig(bootstrap))
    ctx = SourceContext(p.name, runner.spec, runner.metrics, bootstrap)
    runner.source = KafkaMirror(ctx, offsets_in_transaction=offsets_in_transaction)
    await runner.start()
    stop = asyncio.Event()
    src = RunningSource(runner, asyncio.create_task(runner.run(stop)))
    try:
        await src.until(lambda: src.written() >= written)
        # Give an (unwanted) extra copy a moment to be written.
        await asyncio.sleep(0.3)
        assert src.written() == written
    finally:
        stop.set()
        await src.task
        await runner.stop()


@pytest.mark.parametrize("offsets_in_transaction", [True, False], ids=["same-cluster", "other"])
async def test_mirror_copies_records_with_keys_and_resumes_from_its_group(
    kafka_broker: EmbeddedKafka, offsets_in_transaction: bool
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    name = unique("mirror")
    upstream, target = f"{name}-legacy", f"{name}-copy"
    kafka_broker.create_topics([(upstream, PARTITIONS), (target, PARTITIONS)])
    p = source_pipeline(
        name,
        [(target, PARTITIONS)],
        [{"name": "upstream", "to": target, "kafka": {"topic": upstream}}],
    )
    first, later = messages(0, 300), messages(300, 100)
    await produce(bootstrap, upstream, first)
    await mirror_until(p, bootstrap, len(first), offsets_in_transaction)

    await produce(bootstrap, upstream, later)
    await mirror_until(p, bootstrap, len(later), offsets_in_transaction)

    copies = await consume(bootstrap, target, len(first) + len(later))
    assert Counter((r.key, r.value, r.timestamp) for r in copies) == Counter(first + later)
    # Keys preserved means the same partitioning as upstream: one partition per key.
    partitions_of: dict[bytes, set[int]] = {}
    for r in copies:
        if r.key is not None:
            partitions_of.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in partitions_of.values())
    assert {r.headers["flowmill-source"] for r in copies} == {f"{name}.upstream".encode()}

    ends = await consume_ends(bootstrap, upstream)
    assert await committed(bootstrap, mirror_group(name, "upstream"), upstream) == ends


async def consume_ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
