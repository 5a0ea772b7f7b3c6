"""Join two co-partitioned streams by key within a timeout (a trip's start and end).

Pending events wait in memory, and every change to them is written to a compacted
changelog topic in the same Kafka transaction as the step's outputs and offsets; a worker
that takes over a partition rebuilds its pending events from that changelog. Time is the
Kafka record timestamp, so expiry decisions are the same when a batch is replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from flowmill.kafka_security import KafkaClientSecurity
from flowmill.spec import Pipeline, StepSpec, changelog_topic, duration_seconds
from flowmill_workers.events import BadEvent, Event, key_of
from flowmill_workers.runtime.lean_records import FetchedRecord


@dataclass(slots=True)
class Pending:
    side: str
    timestamp_ms: int
    event: Event


class Correlator:
    """The join state of the partitions this worker owns."""

    def __init__(self, pipeline: Pipeline, step: StepSpec) -> None:
        spec = step.correlate
        if spec is None:
            raise ValueError(f"step {step.name} has no correlate")
        self.left_topic = step.from_
        self.key_field = spec.key
        self.timeout_ms = int(duration_seconds(spec.timeout) * 1000)
        self.emit_expired = spec.emit_expired
        self.left_prefix, self.right_prefix = spec.left_prefix, spec.right_prefix
        self.changelog = changelog_topic(pipeline.name, step.name)
        self.pending: dict[int, dict[str, Pending]] = {}
        self.clock: dict[int, int] = {}
        self.changes: list[tuple[int, str, bytes | None]] = []

    async def restore(
        self,
        bootstrap_servers: str,
        security: KafkaClientSecurity,
        partitions: list[TopicPartition],
    ) -> None:
        """Rebuild pending events of newly assigned partitions from the changelog."""
        wanted = [p.partition for p in partitions if p.partition not in self.pending]
        if not wanted:
            return
        for p in wanted:
            self.pending[p] = {}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            **security.kwargs(),
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.changelog, p) for p in wanted]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        self._restore_one(tp.partition, r)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()

    def _restore_one(self, partition: int, record: ConsumerRecord) -> None:
        key = record.key.decode()
        if record.value is None:
            self.pending[partition].pop(key, None)
            return
        body = orjson.loads(record.value)
        self.pending[partition][key] = Pending(body["side"], body["ts"], body["event"])
        self.clock[partition] = max(self.clock.get(partition, 0), body["ts"])

    def drop(self, partitions: list[TopicPartition]) -> None:
        """Forget partitions this worker no longer owns."""
        for tp in partitions:
            self.pending.pop(tp.partition, None)
            self.clock.pop(tp.partition, None)

    def begin(self, tp: TopicPartition) -> None:
        self.pending.setdefault(tp.partition, {})

    def accept(self, tp: TopicPartition, record: FetchedRecord, event: Event) -> list[Event]:
        """Hold the event, or complete its pair: returns the joined events."""
        side = "left" if tp.topic == self.left_topic else "right"
        key = key_of(event, self.key_field)
        partition = tp.partition
        self.clock[partition] = max(self.clock.get(partition, 0), record.timestamp)
        pending = self.pending.setdefault(partition, {})
        other = pending.get(key)
        if other is not None and other.side != side:
            del pending[key]
            self.changes.append((partition, key, None))
            left, right = (other.event, event) if side == "right" else (event, other.event)
            return [self._join(left, right)]
        if other is not None and other.side == side:
            raise BadEvent(f"duplicate {side} event for {self.key_field}={key} while one waits")
        pending[key] = Pending(side, record.timestamp, event)
        self.changes.append(
            (partition, key, orjson.dumps({"side": side, "ts": record.timestamp, "event": event}))
        )
        return []

    def _join(self, left: Event, right: Event) -> Event:
        joined = {f"{self.left_prefix}{k}": v for k, v in left.items()}
        joined.update({f"{self.right_prefix}{k}": v for k, v in right.items()})
        joined["_expired"] = False
        return joined

    def expire(self, tp: TopicPartition) -> list[Event]:
        """Pending events older than the timeout (by record time) leave the state."""
        partition = tp.partition
        now = self.clock.get(partition)
        pending = self.pending.get(partition, {})
        if now is None or not pending:
            return []
        out = []
        for key, item in list(pending.items()):
            if item.timestamp_ms + self.timeout_ms <= now:
                del pending[key]
                self.changes.append((partition, key, None))
                if self.emit_expired:
                    out.append({**item.event, "_expired": True, "_side": item.side})
        return out

    async def write_changelog(self, producer: AIOKafkaProducer) -> None:
        """Send the batch's state changes (inside the step's open transaction)."""
        futures = [
            await producer.send(self.changelog, value, key=key.encode(), partition=partition)
            for partition, key, value in self.changes
        ]
        self.changes = []
        for f in futures:
            await f
