"""The embedded broker is a real Kafka: keyed partitioning, consumer groups, committed offsets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flowmill.local.kafka import EmbeddedKafka
from tests.harness.waiting import unique

MESSAGES = 1_000
PARTITIONS = 3
KEYS = 37


async def produce(bootstrap: str, topic: str) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        sends = [
            await producer.send(topic, key=f"key-{i % KEYS}".encode(), value=str(i).encode())
            for i in range(MESSAGES)
        ]
        await asyncio.gather(*sends)


def group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def consume_and_commit(
    consumer: AIOKafkaConsumer, expected: int, timeout: float = 60.0
) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every record until `expected` arrived, committing each batch."""
    records: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for tp, batch in batches.items():
            records.extend((tp.partition, r.key, r.value) for r in batch)
        if batches:
            await consumer.commit()
    return records


async def test_every_message_arrives_once_and_offsets_are_committed(
    kafka_broker: EmbeddedKafka,
) -> None:
    topic, group = unique("smoke"), unique("group")
    kafka_broker.create_topics([(topic, PARTITIONS)])
    await produce(kafka_broker.bootstrap_servers, topic)

    consumer = group_consumer(kafka_broker.bootstrap_servers, topic, group)
    await consumer.start()
    try:
        records = await consume_and_commit(consumer, MESSAGES)
        # Anything beyond the 1,000 would be a duplicate; give it a moment to show up.
        extra = await consumer.getmany(timeout_ms=500)
        assert sum(len(batch) for batch in extra.values()) == 0

        values = Counter(int(value) for _, _, value in records)
        assert len(records) == MESSAGES
        assert values == Counter(range(MESSAGES))

        partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
        for partition, key, _ in records:
            partitions_of_key[key].add(partition)
        assert len(partitions_of_key) == KEYS
        assert all(len(p) == 1 for p in partitions_of_key.values())
        assert {p for ps in partitions_of_key.values() for p in ps} == set(range(PARTITIONS))

        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end = await consumer.end_offsets(tps)
        assert sum(end.values()) == MESSAGES
        committed = {tp: await consumer.committed(tp) for tp in tps}
        assert committed == end
    finally:
        await consumer.stop()


async def test_second_consumer_in_group_gets_nothing_after_commit(
    kafka_broker: EmbeddedKafka,
) -> None:
    topic, group = unique("smoke"), unique("group")
    kafka_broker.create_topics([(topic, PARTITIONS)])
    await produce(kafka_broker.bootstrap_servers, topic)

    first = group_consumer(kafka_broker.bootstrap_servers, topic, group)
    await first.start()
    try:
        assert len(await consume_and_commit(first, MESSAGES)) == MESSAGES
    finally:
        await first.stop()  # leaves the group, so the second consumer is assigned at once

    second = group_consumer(kafka_broker.bootstrap_servers, topic, group)
    await second.start()
    try:
        received = []
        deadline = time.monotonic() + 30
        # Only once the group has assigned every partition does "nothing" mean anything.
        while len(second.assignment()) < PARTITIONS and time.monotonic() < deadline:
            received += [r for b in (await second.getmany(timeout_ms=200)).values() for r in b]
        assert len(second.assignment()) == PARTITIONS
        for _ in range(3):
            received += [r for b in (await second.getmany(timeout_ms=500)).values() for r in b]
        assert received == []

        tps = sorted(second.assignment())
        end = await second.end_offsets(tps)
        positions = {tp: await second.position(tp) for tp in tps}
        assert positions == end  # resumed from the committed offsets, which are the end
    finally:
        await second.stop()
