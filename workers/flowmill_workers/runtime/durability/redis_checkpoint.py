"""Steps with a Redis sink: the position lives in Redis, advanced by the same atomic
script that applies a partition's batch, and only if it still equals the batch's first
offset (see sinks.redis_tables). A replayed batch, or one written late by a worker that
lost its partition, is refused, and the partition continues from the checkpoint.

Because every write is fenced like that, the loop may compute the next batch while this
one is written (pipelined). Kafka outputs of the same step are sent before the script
runs: at least once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from flowmill.spec import StepSpec
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability.base import (
    Durability,
    Offsets,
    Resume,
    commit_owned,
    next_offsets,
)
from flowmill_workers.runtime.kafka_outputs import KafkaOutputs
from flowmill_workers.sinks.redis_tables import RedisTableSink, load_checkpoints
from flowmill_workers.steps.latest import LatestTable
from flowmill_workers.steps.windows import WindowAggregator, partial_to_wire

log = logging.getLogger("flowmill.worker")

COMMIT_INTERVAL_S = 1.0
"""Redis holds the authoritative position; the Kafka commit only feeds lag (for the
HPA), so once a second is plenty and spares a round trip per batch."""


class RedisCheckpoint(Durability):
    pipelined = True

    def __init__(
        self,
        pipeline: str,
        step: StepSpec,
        redis_url: str | None,
        windows: WindowAggregator | None,
        latest: LatestTable | None,
    ) -> None:
        if not redis_url:
            raise ValueError(f"step {step.name} writes Redis but no Redis URL is set")
        self.pipeline = pipeline
        self.step = step
        self.redis_url = redis_url
        self.windows = windows
        self.latest = latest
        self.redis: aioredis.Redis | None = None
        self._uncommitted: Offsets = {}
        self._last_commit = 0.0

    async def start(self, consumer: AIOKafkaConsumer, outputs: KafkaOutputs) -> None:
        await super().start(consumer, outputs)
        self.redis = aioredis.from_url(self.redis_url)
        await self.redis.ping()
        self.table = RedisTableSink(self.redis, self.pipeline, self.step)

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        return await self._checkpoints(partitions)

    async def write(self, results: list[PartitionResult]) -> Resume:
        await self.outputs.send(results)
        applied = await self._apply(results)
        refused = [r.partition for r, ok in zip(results, applied, strict=True) if not ok]
        self._uncommitted.update(next_offsets(results))
        if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
            await self._commit()
        if not refused:
            return {}
        resume = await self._checkpoints(refused)
        log.warning("checkpoint moved for %s; resuming at %s", refused, resume)
        return resume

    async def flush(self) -> None:
        if self._uncommitted:
            await self._commit()

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def _commit(self) -> None:
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = time.monotonic()
        await commit_owned(self.consumer, offsets)

    async def _checkpoints(self, partitions: list[TopicPartition]) -> Resume:
        assert self.redis is not None
        saved = await load_checkpoints(self.redis, self.pipeline, self.step.name)
        found = {tp: saved.get(f"{tp.topic}:{tp.partition}") for tp in partitions}
        return {tp: position for tp, position in found.items() if position is not None}

    async def _apply(self, results: list[PartitionResult]) -> list[bool]:
        """One round trip: a pipeline of one fenced script per partition."""
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        updates: list[list[Any]]
        for r in results:
            if r.windows is not None and self.windows is not None:
                updates = [
                    [key, str(start), partial_to_wire(partial)]
                    for (key, start), partial in r.windows.partials.items()
                ]
                # The batch's own watermark, not the live one: with pipelining the live
                # one may already include the next batch, and a crash would then replay
                # that batch against a watermark that makes its events look late.
                await self.table.apply_windows(
                    pipe,
                    r.rng,
                    updates,
                    self.windows.aggregates,
                    self.windows.size_ms,
                    self.windows.retain,
                    r.watermark,
                )
            elif self.latest is not None:
                updates = [[k, ts, body] for k, (ts, body) in r.latest.items()]
                await self.table.apply_latest(pipe, r.rng, updates, self.latest.expire_after_ms)
        return [bool(ok) for ok in await pipe.execute()]
