"""Steps whose outputs are Kafka topics (and joins, whose pending events are a changelog
topic): outputs, changelog and consumer offsets go in one Kafka transaction, so a batch
is either wholly visible to read_committed consumers and consumed, or neither.

A transaction can still be completing when the group rebalances (a broker restarted
under it): the loop waits for it (settle) before partitions are revoked, and a partition
assigned again resumes at the later of the group's committed offset and the one this
worker's own last committed transaction moved it to, so a commit the group coordinator
has not made visible yet is never re-read."""

from __future__ import annotations

import asyncio
import os
import socket

from aiokafka import TopicPartition

from flowmill.spec.topology import step_transactional_id
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability.base import Durability, Resume, next_offsets
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
        self._committed: dict[TopicPartition, int] = {}

    async def settle(self) -> None:
        async with self._writing:
            pass

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        resume: Resume = {}
        for tp in partitions:
            own = self._committed.get(tp)
            if own is None:
                continue
            group = await self.consumer.committed(tp)
            if group is None or group < own:
                resume[tp] = (own, None)
        return resume

    async def write(self, results: list[PartitionResult]) -> Resume:
        producer = self.outputs.producer
        offsets = next_offsets(results)
        async with self._writing:
            async with producer.transaction():
                await self.outputs.send(results)
                if self.changelog is not None:
                    await self.changelog.write_changelog(producer)
                await producer.send_offsets_to_transaction(offsets, self.group)
            for tp, o in offsets.items():
                self._committed[tp] = o.offset
        return {}
