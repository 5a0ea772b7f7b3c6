"""A transaction's consumer offsets committed under the group generation they were read
in (TxnOffsetCommit v3, KIP-447), so the group coordinator refuses them from a worker
the group has moved on from.

aiokafka sends TxnOffsetCommit v0, which carries no generation: a worker paused, or cut
off from the group coordinator, longer than its session timeout while its batch's
outputs sit in an open transaction is dropped from the group, its partitions go to
another member (whose transactional id differs, so it fences nothing), and on waking it
still commits its batch: those outputs appear twice. v3 adds the generation and member
id, and the coordinator answers ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID or
FENCED_INSTANCE_ID instead; the producer then aborts the transaction.

aiokafka's sender sends the request itself (after AddOffsetsToTxn, one transactional
request at a time); `fence_by_generation` swaps in the v3 request for one producer.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaError,
    NotCoordinatorError,
    ProducerFenced,
    RequestTimedOutError,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.producer.sender import TxnOffsetCommitHandler
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import TxnOffsetCommitRequest_v0
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

log = logging.getLogger("flowmill.worker")

TXN_OFFSET_COMMIT = 28
FENCING_ERRORS = {22: "ILLEGAL_GENERATION", 25: "UNKNOWN_MEMBER_ID", 82: "FENCED_INSTANCE_ID"}
"""What the group coordinator answers a commit from a generation it has moved on from."""


@dataclass(frozen=True)
class Generation:
    """A consumer's membership of its group, as the coordinator named it at a join."""

    generation_id: int
    member_id: str
    group_instance_id: str | None = None


class GroupFenced(KafkaError):
    """The group coordinator refused the transaction's offsets: the worker's generation
    is not the group's any more (or it has none). The transaction must abort."""

    retriable = False


def group_generation(consumer: AIOKafkaConsumer) -> Generation:
    """The consumer's generation and member id right now (aiokafka keeps them on its
    coordinator only; -1 and "" while it is not a member)."""
    coordinator: Any = consumer._coordinator
    return Generation(coordinator.generation, coordinator.member_id,
                      coordinator._group_instance_id)  # fmt: skip


def request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Make the consumer rejoin its group at its next turn (revoking every partition
    first), whether or not its heartbeat has noticed it was dropped."""
    coordinator: Any = consumer._coordinator
    coordinator.request_rejoin()


class _TxnOffsetCommitResponseV3(Response):
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
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
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequestV3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    RESPONSE_TYPE = _TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
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
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


_Struct: TypeAlias = TxnOffsetCommitRequest_v0 | _TxnOffsetCommitRequestV3
Commit = list[tuple[str, list[tuple[int, int, str]]]]


class _TxnOffsetCommit(Request[_Struct]):
    """v3 with the generation; v0 (aiokafka's, unfenced) from a broker without v3
    (before Kafka 2.5)."""

    API_KEY = TXN_OFFSET_COMMIT

    def __init__(
        self, transactional_id: str, group: str, producer: tuple[int, int], topics: Commit,
        generation: Generation,
    ) -> None:  # fmt: skip
        self.transactional_id, self.group, self.producer = transactional_id, group, producer
        self.topics, self.generation = topics, generation

    def build(self, request_struct_class: type[_Struct]) -> _Struct:
        pid, epoch = self.producer
        if request_struct_class is TxnOffsetCommitRequest_v0:
            log.warning("the broker has no TxnOffsetCommit v3 (Kafka < 2.5): the offsets "
                        "of group %s go without its generation, unfenced", self.group)  # fmt: skip
            return TxnOffsetCommitRequest_v0(
                self.transactional_id, self.group, pid, epoch, self.topics
            )
        g = self.generation
        # Each row with the leader epoch (-1: unknown) and its tagged fields (none).
        topics: list[
            tuple[str, list[tuple[int, int, int, str, dict[int, bytes]]], dict[int, bytes]]
        ] = [
            (topic, [(p, offset, -1, meta, {}) for p, offset, meta in parts], {})
            for topic, parts in self.topics
        ]
        return _TxnOffsetCommitRequestV3(
            self.transactional_id, self.group, pid, epoch, g.generation_id, g.member_id,
            g.group_instance_id, topics, {},
        )  # fmt: skip


class _FencedTxnOffsetCommitHandler(TxnOffsetCommitHandler):
    """aiokafka's handler with the v3 request, and the fencing errors made abortable:
    the pending offsets fail with GroupFenced while the transaction stays in progress,
    so the caller's abort sends EndTxn(ABORT) for the outputs already written. (aiokafka's
    own abortable path, error_transaction, forgets the transaction's partitions, and
    the abort that follows sends nothing: the outputs would stay open until the
    transaction timeout, and the producer's next transaction would commit them.)"""

    def __init__(
        self, sender: Any, offsets: Any, group_id: str, generation: Generation | None
    ) -> None:
        super().__init__(sender, offsets, group_id)
        self._generation = generation

    def create_request(self) -> _TxnOffsetCommit:
        txn = self._sender._txn_manager
        by_topic: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
        for tp, offset in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, offset.offset, offset.metadata))
        generation = self._generation or Generation(-1, "")
        return _TxnOffsetCommit(
            txn.transactional_id, self._group_id, (txn.producer_id, txn.producer_epoch),
            list(by_topic.items()), generation,
        )  # fmt: skip

    def _fence(self, why: str) -> None:
        txn = self._sender._txn_manager
        _group, _offsets, fut = txn._pending_txn_offsets.popleft()
        fut.set_exception(GroupFenced(f"group {self._group_id}: {why}"))

    def handle_response(self, resp: Any) -> float | None:
        txn = self._sender._txn_manager
        # v0 names the list `errors`, v3 `topics`; v3's rows end in tagged fields.
        topics = resp.topics if hasattr(resp, "topics") else resp.errors
        for topic, partitions, *_ in topics:
            for partition, code, *_ in partitions:
                tp = TopicPartition(topic, partition)
                error = for_code(code)
                if code == 0:
                    txn.offset_committed(tp, self._offsets[tp].offset, self._group_id)
                elif code in FENCING_ERRORS:
                    g = self._generation
                    self._fence(f"{FENCING_ERRORS[code]} for {tp} (this worker's "
                                f"generation {g.generation_id if g else None})")  # fmt: skip
                    return None
                elif error in (CoordinatorNotAvailableError, NotCoordinatorError,
                               RequestTimedOutError):  # fmt: skip
                    self._sender._coordinator_dead(CoordinationType.GROUP)
                    return float(self._default_backoff)
                elif error in (CoordinatorLoadInProgressError, UnknownTopicOrPartitionError):
                    return float(self._default_backoff)
                elif error is InvalidProducerEpoch:
                    raise ProducerFenced()
                elif error is TransactionalIdAuthorizationFailed:
                    raise error(txn.transactional_id)
                elif error is GroupAuthorizationFailedError:
                    txn.error_transaction(error(self._group_id))
                    return None
                else:
                    raise error(f"TxnOffsetCommit {tp} for group {self._group_id}")
        return None


def fence_by_generation(
    producer: AIOKafkaProducer, generation: Callable[[], Generation | None]
) -> None:
    """Make `producer` commit its transactions' offsets under `generation()` (the one its
    consumer's partitions were assigned in); send_offsets_to_transaction then raises
    GroupFenced when the group has moved on. A generation of None or -1 (not a member)
    is refused here, since the coordinator takes -1 as "no generation to check"."""
    sender: Any = producer._sender

    async def txn_offset_commit(offsets: Any, group_id: str) -> None:
        # As aiokafka's Sender._do_txn_offset_commit, with the handler above.
        if not offsets:
            return
        handler = _FencedTxnOffsetCommitHandler(sender, offsets, group_id, generation())
        g = handler._generation
        if g is None or g.generation_id < 0:
            handler._fence("this worker is not a member of the group")
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as exc:
            sender._txn_manager.error_transaction(exc)
            return
        await handler.do(node_id)

    sender._do_txn_offset_commit = txn_offset_commit
