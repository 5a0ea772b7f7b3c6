"""Steps whose outputs are Kafka topics (and joins, whose pending events are a changelog
topic): outputs, changelog and consumer offsets go in one Kafka transaction, so a batch
is either wholly visible to read_committed consumers and consumed, or neither.

A transaction can still be completing when the group rebalances (a broker restarted
under it): the loop waits for this worker's own one (settle) before partitions are
revoked, and an assigned partition resumes at its committed offset as read once no
transaction, this worker's or a predecessor's, is still committing it (stable_offsets):
a plain read would return the offset from before that transaction and re-read its batch.

The offsets go with the group generation the partitions were assigned in (group_fence):
a worker the group dropped while its batch was open (paused, or cut off longer than the
session timeout) has its commit refused, aborts that batch and rejoins, so the batch's
outputs come only from the partitions' new owner."""

from __future__ import annotations

import asyncio
import os
import socket

from aiokafka import AIOKafkaConsumer, TopicPartition

from flowmill.spec.topology import step_transactional_id
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability.base import (
    BatchFenced,
    Durability,
    Resume,
    next_offsets,
)
from flowmill_workers.runtime.durability.group_fence import (
    Generation,
    GroupFenced,
    fence_by_generation,
    group_generation,
)
from flowmill_workers.runtime.durability.stable_offsets import stable_committed
from flowmill_workers.runtime.kafka_outputs import KafkaOutputs
from flowmill_workers.steps.correlate import Correlator


class KafkaTransaction(Durability):
    def __init__(self, pipeline: str, step: str, group: str, changelog: Correlator | None) -> None:
        self.group = group
        self.changelog = changelog
        # Stable per pod (the hostname) so a restarted worker fences its predecessor's
        # open transaction instead of waiting for it to time out. A pod with a new name
        # has a new id: the group generation fences its predecessor instead
        # (docs/reliability.md, "Zombie workers").
        instance = os.environ.get("HOSTNAME", socket.gethostname())
        self.transactional_id = step_transactional_id(pipeline, step, instance)
        self._writing = asyncio.Lock()
        self.generation: Generation | None = None
        """The group generation of the current assignment: every batch written was
        fetched in it (the loop drops batches fetched before a rebalance)."""

    async def start(self, consumer: AIOKafkaConsumer, outputs: KafkaOutputs) -> None:
        await super().start(consumer, outputs)
        fence_by_generation(outputs.producer, lambda: self.generation)

    async def settle(self) -> None:
        async with self._writing:
            pass

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        # Before any await: a heartbeat failing meanwhile resets the consumer's
        # generation to none, which the coordinator would take as "do not check".
        self.generation = group_generation(self.consumer)
        committed = await stable_committed(self.consumer, self.group, partitions)
        # A partition the group never committed starts where the loop's default puts it.
        return {tp: (o, None) for tp, o in committed.items() if o is not None}

    async def write(self, results: list[PartitionResult]) -> Resume:
        producer = self.outputs.producer
        offsets = next_offsets(results)
        try:
            # An exception inside aborts the transaction: its outputs are never read.
            async with self._writing, producer.transaction():
                await self.outputs.send(results)
                if self.changelog is not None:
                    await self.changelog.write_changelog(producer)
                await producer.send_offsets_to_transaction(offsets, self.group)
        except GroupFenced as err:
            raise BatchFenced(str(err)) from err
        return {}
