"""Where a source stopped, read back from its own output topic.

Why the output topic: it is the one place that is durable exactly when the events are.
Every record a source writes carries a `flowmill-source` header (pipeline.source, so
several sources may share a topic). Records are written in Kafka transactions, and the
next transaction starts only once the previous one committed, so the committed records
always form a prefix of what the source produced. The last record of each partition in a
transaction also carries `flowmill-position` (JSON: `seq`, the number of records the
source has written once the transaction commits, and `pos`, the source's own state
then); the position with the highest `seq` found in any partition tells where the
committed prefix ends. A restarted source first fences its predecessor (same
transactional id, which aborts the predecessor's open transaction), then reads the last
committed records of each partition with read_committed and continues after the highest
`seq`: no event is written twice and none is skipped, whatever instant the old process
died at. There is no side store to keep in step with the topic.

If retention deletes every record of a source from a partition, that partition simply
offers no position; only if it deletes them from all partitions does the source start
over. Sources whose topic keeps data for less time than they run should use `loop: false`
or accept a restart from the top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError

from flowmill.kafka_security import KafkaClientSecurity
from flowmill_workers.sources.base import Position

SOURCE_HEADER = "flowmill-source"
POSITION_HEADER = "flowmill-position"

_FIRST_WINDOW = 64
_SCAN_TIMEOUT = 30.0


class OutputTopicMissing(RuntimeError):
    """The topic a source writes to does not exist (topics are never auto-created)."""


@dataclass(frozen=True)
class Resumed:
    """The state stored with a source's last committed record."""

    seq: int = 0
    position: Position | None = None


def source_id(pipeline: str, source: str) -> bytes:
    """The `flowmill-source` header value: unique per source across Pipelines."""
    return f"{pipeline}.{source}".encode()


def position_header(seq: int, position: Position | None) -> bytes:
    return orjson.dumps({"seq": seq, "pos": position})


async def output_partitions(producer: AIOKafkaProducer, topic: str) -> set[int]:
    """The partitions of `topic`, waiting the producer's request timeout for a topic that
    is still being created (an operator may be creating it right now)."""
    try:
        return set(await producer.partitions_for(topic))
    except UnknownTopicOrPartitionError:
        raise OutputTopicMissing(
            f"topic {topic!r} does not exist; declare it in spec.topics and create it"
        ) from None


async def last_position(
    bootstrap_servers: str,
    security: KafkaClientSecurity,
    topic: str,
    partition_ids: set[int],
    sid: bytes,
) -> Resumed:
    """The highest-`seq` position written by source `sid` into committed records of
    `topic`, or Resumed() when it never wrote anything."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="flowmill-resume",
        **security.kwargs(),
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(partition_ids)]
        consumer.assign(partitions)
        begins = await consumer.beginning_offsets(partitions)
        # With read_committed, the end is the last stable offset: an open transaction of a
        # fenced predecessor has been aborted by then, so nothing uncommitted is counted.
        ends = await consumer.end_offsets(partitions)
        best = Resumed()
        for tp in partitions:
            found = await _last_in_partition(consumer, tp, begins[tp], ends[tp], sid)
            if found is not None and found.seq > best.seq:
                best = found
        return best
    finally:
        await consumer.stop()


async def _last_in_partition(
    consumer: AIOKafkaConsumer, tp: TopicPartition, begin: int, end: int, sid: bytes
) -> Resumed | None:
    # Read backwards in growing windows: usually the last record is ours and one small
    # read suffices; another source sharing the topic only makes it look further back.
    window, upper = _FIRST_WINDOW, end
    while upper > begin:
        lower = max(begin, upper - window)
        found = await _scan(consumer, tp, lower, upper, sid)
        if found is not None:
            return found
        upper, window = lower, window * 4
    return None


async def _scan(
    consumer: AIOKafkaConsumer, tp: TopicPartition, lower: int, upper: int, sid: bytes
) -> Resumed | None:
    """The last record of `sid` with an offset in [lower, upper)."""
    consumer.seek(tp, lower)
    found: Resumed | None = None
    deadline = time.monotonic() + _SCAN_TIMEOUT
    # Aborted records and transaction markers take offsets but are never returned, so the
    # consumer's position (not the last record seen) says when the window is read.
    while await consumer.position(tp) < upper:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {tp.topic}[{tp.partition}] to find the source position")
        batch = await consumer.getmany(tp, timeout_ms=500)
        for record in batch.get(tp, []):
            if record.offset >= upper:
                break
            headers = dict(record.headers or ())
            if headers.get(SOURCE_HEADER) == sid and POSITION_HEADER in headers:
                stored = orjson.loads(headers[POSITION_HEADER])
                found = Resumed(int(stored["seq"]), stored.get("pos"))
    return found
