"""A consumer group's committed offsets as they stand once no transaction is still
committing them (OffsetFetch v7, require_stable: KIP-447).

A transactional step moves its group's offsets inside its transaction. Until the
transaction's commit marker reaches __consumer_offsets (asynchronously, after the producer
was told the commit succeeded, and much later when a broker restarted mid-commit), a plain
OffsetFetch, which is all aiokafka sends, returns the offset from before the transaction:
a worker resuming there re-reads a batch whose outputs are already committed. With
require_stable the group coordinator answers UNSTABLE_OFFSET_COMMIT for such a partition
instead, and we ask again until it is settled, whichever worker's transaction it was.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

UNSTABLE_OFFSET_COMMIT = 88
# Retriable while a broker restarts: the coordinator is loading, moved, or not up yet.
COORDINATOR_LOADING, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR = 14, 15, 16
RETRY_SECONDS = 0.1
STABLE_TIMEOUT = 120.0
"""Longer than aiokafka's transaction timeout (60 s): a transaction left open by a
worker that died is aborted by the coordinator by then, which settles its offsets."""


class OffsetsNotStable(RuntimeError):
    """The group's offsets stayed pending (or the coordinator unreachable) too long."""


class _OffsetFetchResponseV7(Response):
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequestV7(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = _OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


_Struct: TypeAlias = _OffsetFetchRequestV7


class _StableOffsetFetch(Request[_Struct]):
    API_KEY = 9

    def __init__(self, group: str, partitions: list[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in partitions:
            by_topic[tp.topic].append(tp.partition)
        self.topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, sorted(ps), {}) for topic, ps in sorted(by_topic.items())
        ]
        self.group = group

    def build(self, request_struct_class: type[_Struct]) -> _Struct:
        return request_struct_class(self.group, self.topics, True, {})


async def stable_committed(
    consumer: AIOKafkaConsumer,
    group: str,
    partitions: list[TopicPartition],
    timeout: float | None = None,
) -> dict[TopicPartition, int | None]:
    """Each partition's committed offset (None: none yet) once no transaction holds a
    pending commit for it; OffsetsNotStable after `timeout` (STABLE_TIMEOUT) seconds."""
    if timeout is None:
        timeout = STABLE_TIMEOUT
    # The consumer's own client: already bootstrapped, and its connections are reused.
    client: Any = consumer._client
    deadline = time.monotonic() + timeout
    pending = list(partitions)
    found: dict[TopicPartition, int | None] = {}
    last = "no answer yet"
    while pending:
        if time.monotonic() > deadline:
            raise OffsetsNotStable(
                f"group {group}: committed offsets of {sorted(map(str, pending))} not "
                f"stable within {timeout:.0f}s ({last})"
            )
        try:
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            response = await client.send(node, _StableOffsetFetch(group, pending))
        except Exception as err:  # a broker restarting: any client error is passing
            last = repr(err)
            await asyncio.sleep(RETRY_SECONDS)
            continue
        retry = _read(response, found, group)
        pending = [tp for tp in pending if tp not in found]
        if retry is not None:
            last = retry
            await asyncio.sleep(RETRY_SECONDS)
    return found


def _read(response: Any, found: dict[TopicPartition, int | None], group: str) -> str | None:
    """Record the settled partitions of a response; returns why others must be asked
    again (None when nothing needs asking again)."""
    retriable = {UNSTABLE_OFFSET_COMMIT, COORDINATOR_LOADING, COORDINATOR_NOT_AVAILABLE,
                 NOT_COORDINATOR}  # fmt: skip
    if response.error_code in retriable:
        return f"group error {response.error_code}"
    if response.error_code:
        raise for_code(response.error_code)(f"OffsetFetch for group {group}")
    retry = None
    for topic, parts, _ in response.topics:
        for partition, offset, _epoch, _meta, error, _ in parts:
            tp = TopicPartition(topic, partition)
            if error in retriable:
                retry = f"{tp}: error {error}"
            elif error:
                raise for_code(error)(f"OffsetFetch {tp} for group {group}")
            else:
                found[tp] = offset if offset >= 0 else None
    return retry
