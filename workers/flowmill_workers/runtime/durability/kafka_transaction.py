"""Steps whose outputs are Kafka topics (and joins, whose pending events are a changelog
topic): outputs, changelog and consumer offsets go in one Kafka transaction, so a batch
is either wholly visible to read_committed consumers and consumed, or neither.

A transaction can still be completing when the group rebalances (a broker restarted
under it): the loop waits for this worker's own one (settle) before partitions are
revoked, and an assigned partition resumes at its committed offset as read once no
transaction, this worker's or a predecessor's, is still committing it (stable_offsets):
a plain read would return the offset from before that transaction and re-read its batch."""

from __future__ import annotations

import asyncio
import os
import socket

from aiokafka import TopicPartition

from flowmill.spec.topology import step_transactional_id
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability.base import Durability, Resume, next_offsets
from flowmill_workers.runtime.durability.stable_offsets import stable_committed
from flowmill_workers.steps.correlate import Correlator


class KafkaTransaction(Durability):
    def __init__(self, pipeline: str, step: str, group: str, changelog: Correlator | None) -> None:
        self.group = group
        self.changelog = changelog
        # Stable per pod (the hostname) so a restarted worker fences its predecessor's
        # open transaction instead of waiting for it to time out.
        instance = os.environ.get("HOSTNAME", socket.gethostname())
        self.transactional_id = step_transactional_id(pipeline, step, instance)
        self._writing = asyncio.Lock()

    async def settle(self) -> None:
        async with self._writing:
            pass

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        committed = await stable_committed(self.consumer, self.group, partitions)
        # A partition the group never committed starts where the loop's default puts it.
        return {tp: (o, None) for tp, o in committed.items() if o is not None}

    async def write(self, results: list[PartitionResult]) -> Resume:
        producer = self.outputs.producer
        offsets = next_offsets(results)
        async with self._writing, producer.transaction():
            await self.outputs.send(results)
            if self.changelog is not None:
                await self.changelog.write_changelog(producer)
            await producer.send_offsets_to_transaction(offsets, self.group)
        return {}
