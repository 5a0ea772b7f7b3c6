"""The contract between the step loop and what makes its batches durable.

The loop fetches a batch, computes it in memory (runtime.batch_compute) and hands the
results to one Durability, which writes them and moves the step's position forward in
whatever store holds that position. The loop never asks which store that is.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from flowmill_workers.runtime.batch_compute import Checkpoint, PartitionResult
from flowmill_workers.runtime.kafka_outputs import KafkaOutputs

log = logging.getLogger("flowmill.worker")

Offsets = dict[TopicPartition, OffsetAndMetadata]
Resume = dict[TopicPartition, Checkpoint]
"""Partitions whose position a strategy holds, with where each one continues."""


class BatchFenced(Exception):
    """The store refused a batch because the consumer group has moved on from this
    worker (its partitions belong to another member now); nothing of the batch became
    durable. The loop drops it and rejoins the group."""


class Durability(ABC):
    """How one step makes a computed batch durable and where its position lives."""

    transactional_id: str | None = None
    """Set when the step's producer writes in Kafka transactions."""
    pipelined: bool = False
    """Whether the next batch may be computed while this one is written: only safe when
    each write is fenced by its own position, so a stale one is refused, not doubled."""

    consumer: AIOKafkaConsumer
    outputs: KafkaOutputs

    async def start(self, consumer: AIOKafkaConsumer, outputs: KafkaOutputs) -> None:
        """Called once the step's clients exist, before the first assignment."""
        self.consumer = consumer
        self.outputs = outputs

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        """Prepare newly owned partitions; returns those that resume somewhere other than
        the committed Kafka offset."""
        return {}

    def health(self) -> tuple[bool, str] | None:
        """(False, why) while the strategy cannot make batches durable; None if it can."""
        return None

    async def settle(self) -> None:
        """Wait until a write in flight is finished (before a rebalance reads positions)."""
        return None

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget what is held for partitions this worker no longer owns."""
        return None

    @abstractmethod
    async def write(self, results: list[PartitionResult]) -> Resume:
        """Make one batch durable and advance past it; returns partitions whose write
        was refused (another worker moved them on), with where they continue. Raises
        BatchFenced when the whole batch was refused and where it continues is the
        group's to say."""

    async def idle(self) -> None:
        """Called when a fetch brought nothing: time-based work is due."""
        return None

    async def flush(self) -> None:
        """Make whatever is still held durable (the loop has stopped)."""
        return None

    def unflushed(self) -> list[str]:
        """What the strategy holds that is not durable yet, one item per buffer (said
        when a stop runs out of time)."""
        return []

    async def close(self) -> None:
        """Release the strategy's own connections."""
        return None


def next_offsets(results: list[PartitionResult]) -> Offsets:
    """The committed position after a batch: the offset following each partition's last."""
    return {r.partition: OffsetAndMetadata(r.rng.next, "") for r in results}


async def commit_owned(consumer: AIOKafkaConsumer, offsets: Offsets) -> None:
    """Commit the offsets of partitions still owned; a commit lost to a rebalance is
    logged, since the new owner resumes from the durable position anyway."""
    owned = consumer.assignment()
    offsets = {tp: o for tp, o in offsets.items() if tp in owned}
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as err:
        log.warning("offset commit failed (rebalance?): %s", err)
