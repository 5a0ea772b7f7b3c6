"""Steps whose outputs are Kafka topics (and joins, whose pending events are a changelog
topic): outputs, changelog and consumer offsets go in one Kafka transaction, so a batch
is either wholly visible to read_committed consumers and consumed, or neither."""

from __future__ import annotations

import os
import socket

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

    async def write(self, results: list[PartitionResult]) -> Resume:
        producer = self.outputs.producer
        async with producer.transaction():
            await self.outputs.send(results)
            if self.changelog is not None:
                await self.changelog.write_changelog(producer)
            await producer.send_offsets_to_transaction(next_offsets(results), self.group)
        return {}
