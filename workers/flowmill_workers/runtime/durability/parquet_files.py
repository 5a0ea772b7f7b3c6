"""Steps with a Parquet sink: a file holds one partition's offsets [first, next) and is
named after them; offsets are committed only once the file is written. A worker taking a
partition deletes files at or past the committed offset (a crashed predecessor's), so
the replay rewrites them and nothing is doubled (see sinks.parquet_lake)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from flowmill.spec import StepSpec
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability.base import Durability, Resume, commit_owned
from flowmill_workers.sinks.parquet_lake import ParquetLake

log = logging.getLogger("flowmill.worker")


class ParquetFiles(Durability):
    def __init__(self, pipeline: str, step: StepSpec) -> None:
        self.lake = ParquetLake(pipeline, step)

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        for tp in partitions:
            committed = await self.consumer.committed(tp)
            removed = await asyncio.to_thread(
                self.lake.discard_uncommitted, tp.topic, tp.partition, committed or 0
            )
            if removed:
                log.info("removed %d uncommitted lake file(s) of %s", removed, tp)
        return {}

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        # Rows held for a partition now owned elsewhere are the new owner's to write;
        # writing them here could add a file next to the one it writes.
        for tp in partitions:
            self.lake.drop(tp.topic, tp.partition)

    async def write(self, results: list[PartitionResult]) -> Resume:
        await self.outputs.send(results)  # dead letters: at least once
        for r in results:
            self.lake.add(r.rng.topic, r.rng.partition, r.rng.first, r.rng.next, r.rows)
        await self._write_files(self.lake.due())
        return {}

    async def idle(self) -> None:
        await self._write_files(self.lake.due())

    async def flush(self) -> None:
        await self._write_files(list(self.lake.buffers))

    def unflushed(self) -> list[str]:
        return [
            f"{len(b.rows)} row(s) of {t}-{p} offsets {b.first}..{b.next - 1} not yet in a file"
            for (t, p), b in list(self.lake.buffers.items())
        ]

    async def _write_files(self, partitions: list[tuple[str, int]]) -> None:
        """Write the given partitions' files, then commit exactly the offsets they cover."""
        if not partitions:
            return
        written = await self.lake.flush(partitions)
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(nxt, "") for (t, p), nxt in written.items()
        }
        await commit_owned(self.consumer, offsets)
