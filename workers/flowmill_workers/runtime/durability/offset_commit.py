"""Steps without a sink (they only validate): nothing to make durable but their dead
letters, sent before the offsets are committed, so at least once."""

from __future__ import annotations

from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.durability.base import (
    Durability,
    Resume,
    commit_owned,
    next_offsets,
)


class OffsetCommit(Durability):
    async def write(self, results: list[PartitionResult]) -> Resume:
        await self.outputs.send(results)
        await commit_owned(self.consumer, next_offsets(results))
        return {}
