"""kafka: mirror an existing topic (possibly on another cluster) into a Pipeline topic.

Records are copied as they are: value bytes, key bytes and timestamp (so a JSON decode
error is a downstream step's dead letter, not a mirror crash). With the source's `key`
set, a record whose value is a JSON object holding that field is re-keyed by it; any
other record keeps its key.

The consumer group is flowmill.spec.mirror_group() and its offsets are the position:
- same cluster: the offsets are committed inside the transaction that writes the copies
  (send_offsets_to_transaction), so a crash can neither lose nor duplicate a record;
- another cluster: a transaction cannot span two clusters, so offsets are committed right
  after the copies' transaction committed. A crash between the two repeats that one
  batch downstream (at-least-once), never loses a record.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from flowmill.kafka_security import PLAINTEXT
from flowmill.spec import mirror_group
from flowmill_workers.events import BadEvent, decode, key_of
from flowmill_workers.sources.base import Chunk, OutRecord, Position, Source, SourceContext

CHUNK = 5000


def _servers(value: str) -> set[str]:
    return {s.strip() for s in value.split(",") if s.strip()}


class KafkaMirror(Source):
    position_in_output = False

    def __init__(self, ctx: SourceContext, offsets_in_transaction: bool | None = None) -> None:
        """`offsets_in_transaction` overrides the same-cluster test (for tests)."""
        super().__init__(ctx)
        assert ctx.spec.kafka is not None
        self.spec = ctx.spec.kafka
        self.servers = self.spec.bootstrap_servers or ctx.bootstrap_servers
        same_cluster = _servers(self.servers) == _servers(ctx.bootstrap_servers)
        # The Pipeline's credentials go to its own cluster only, never to another one.
        self.security = ctx.security if same_cluster else PLAINTEXT
        if offsets_in_transaction is None:
            offsets_in_transaction = same_cluster
        self.offsets_in_transaction = offsets_in_transaction
        self.group = mirror_group(ctx.pipeline, self.name)
        self.consumer: AIOKafkaConsumer | None = None
        self.offsets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            self.spec.topic,
            bootstrap_servers=self.servers,
            group_id=self.group,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset=self.spec.start_from,
            # Only committed records: an aborted upstream transaction is not data.
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 << 20,
            **self.security.kwargs(),
        )
        await self.consumer.start()

    async def chunks(self) -> AsyncIterator[Chunk]:
        assert self.consumer is not None
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=CHUNK)
            records: list[OutRecord] = []
            for tp, consumed in batch.items():
                if not consumed:
                    continue
                records.extend(self._copy(r) for r in consumed if r.value is not None or r.key)
                self.offsets[tp] = consumed[-1].offset + 1
            if batch:
                # Cumulative, so the last chunk of a transaction carries every offset.
                yield Chunk(records, {"offsets": dict(self.offsets)})

    def _copy(self, record: ConsumerRecord[Any, Any]) -> OutRecord:
        key = record.key
        if self.encoder.key_field is not None and record.value is not None:
            # Not JSON, or no such field: the upstream key stays.
            with contextlib.suppress(BadEvent):
                key = key_of(decode(record.value), self.encoder.key_field).encode()
        return key, record.value, record.timestamp

    async def before_commit(self, producer: AIOKafkaProducer, position: Position | None) -> None:
        if self.offsets_in_transaction and position:
            await producer.send_offsets_to_transaction(position["offsets"], self.group)

    async def after_commit(self, position: Position | None) -> None:
        if not self.offsets_in_transaction and position and self.consumer is not None:
            await self.consumer.commit(position["offsets"])

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
