"""The step consumer reads aiokafka's parsed records instead of a ConsumerRecord each
(runtime/lean_records.py): the same offsets, timestamps, keys and values, transactions
handled as before (read_committed skips an aborted one), and every other consumer in
the process still gets ConsumerRecords."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from flowmill.local.kafka import EmbeddedKafka
from flowmill_workers.runtime import lean_records
from flowmill_workers.runtime.lean_records import RAW_RECORDS
from tests.harness.waiting import unique


async def read(bootstrap: str, topic: str, lean: bool, want: int) -> list[object]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **({"value_deserializer": RAW_RECORDS} if lean else {}),
    )
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    got: list[object] = []
    try:
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
            if (
                len(got) >= want
                and await consumer.position(tp) >= (await consumer.end_offsets([tp]))[tp]
            ):
                break
    finally:
        await consumer.stop()
    return got


async def test_lean_records_are_the_same_records_and_skip_aborted_transactions(
    kafka_broker: EmbeddedKafka,
) -> None:
    assert lean_records.install(), "aiokafka's PartitionRecords no longer fits lean_records"
    topic = unique("lean")
    kafka_broker.create_topics([(topic, 1)])
    bootstrap = kafka_broker.bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(5):
                await producer.send(
                    topic, f"kept {i}".encode(), key=b"k%d" % i, timestamp_ms=1000 + i
                )
        await producer.begin_transaction()
        for i in range(3):
            await producer.send(topic, f"aborted {i}".encode(), key=b"a")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"kept 5", key=None, timestamp_ms=2000)
    finally:
        await producer.stop()

    lean = await read(bootstrap, topic, True, 6)
    plain = await read(bootstrap, topic, False, 6)
    assert all(isinstance(r, ConsumerRecord) for r in plain)
    assert not any(isinstance(r, ConsumerRecord) for r in lean), "the step's are not wrapped"
    fields = [(r.offset, r.timestamp, r.key, r.value) for r in plain]  # type: ignore[attr-defined]
    assert [(r.offset, r.timestamp, r.key, r.value) for r in lean] == fields  # type: ignore[attr-defined]
    assert [v for *_, v in fields] == [*(f"kept {i}".encode() for i in range(5)), b"kept 5"]
    assert fields[0][1:3] == (1000, b"k0") and fields[-1][2] is None
