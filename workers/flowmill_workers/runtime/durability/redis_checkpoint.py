"""Steps with a Redis sink: the position lives in Redis, advanced by the same atomic
script that applies a partition's batch, and only if it still equals the batch's first
offset (see sinks.redis_tables). A replayed batch, or one written late by a worker that
lost its partition, is refused, and the partition continues from the checkpoint.

Because every write is fenced like that, the loop may compute the next batch while this
one is written (pipelined). Kafka outputs of the same step are sent before the script
runs: at least once.

Faults (docs/reliability.md):
- A partition without a checkpoint starts from the earliest retained offset, and only
  its first batch may find the checkpoint absent. A checkpoint missing anywhere else
  (the step had committed Kafka offsets, or the script says so mid-stream) means Redis
  lost the table: the partition is rebuilt from the earliest retained offset, the step is
  unready meanwhile, and the table's status hash says so (and which partitions can no
  longer be complete because Kafka deleted the beginning).
- A write Redis refuses for a reason that may pass (OOM, LOADING, a lost connection, no
  answer within `WriteRetry.reply_timeout_s`: a paused Redis) is retried with back-off; the step is unready while it fails and the worker gives up
  (the write raises) after `WriteRetry.give_up_s`, so Kubernetes restarts it.
- A write that fails the same way every time (a script error) is retried
  `WriteRetry.attempts` times; then the partition's whole batch goes to the dead-letter
  topic with the error as its reason and the checkpoint moves past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ProducerFenced
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flowmill import serving
from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import StepSpec
from flowmill.spec.launch import REDIS_TIMEOUT_S
from flowmill_workers.runtime.batch_compute import Checkpoint, PartitionResult
from flowmill_workers.runtime.dead_letter import DeadLetter
from flowmill_workers.runtime.durability.base import (
    Durability,
    Offsets,
    Resume,
    commit_owned,
    next_offsets,
)
from flowmill_workers.runtime.kafka_outputs import KafkaOutputs
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.sinks.redis_tables import (
    APPLIED,
    LOST,
    BatchPosition,
    RedisTableSink,
    WriteOutcome,
    load_checkpoints,
    write_outcome,
)
from flowmill_workers.sinks.window_emit import WindowEmitter
from flowmill_workers.steps.idleness import Idleness, now_ms
from flowmill_workers.steps.latest import LatestTable
from flowmill_workers.steps.sessions import SessionAggregator, SessionBatch
from flowmill_workers.steps.windows import (
    Partial,
    WindowAggregator,
    WindowBatch,
    partial_to_wire,
)

log = logging.getLogger("flowmill.worker")

COMMIT_INTERVAL_S = 1.0
"""Redis holds the authoritative position; the Kafka commit only feeds lag (for the
HPA), so once a second is plenty and spares a round trip per batch."""

_PASSING = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    OutOfMemoryError,
    BusyLoadingError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
)


def may_pass(err: BaseException) -> bool:
    """Whether a failed write may succeed later unchanged (Redis full, loading, away),
    as opposed to failing the same way every time (a script error)."""
    if isinstance(err, _PASSING):
        return True
    text = str(err)
    # BUSY (another script running), MISCONF (RDB failing), NOREPLICAS, MASTERDOWN.
    return isinstance(err, ResponseError) and text.split(" ", 1)[0] in (
        "BUSY",
        "MISCONF",
        "NOREPLICAS",
        "MASTERDOWN",
    )


@dataclass(frozen=True)
class WriteRetry:
    """How a step retries writes Redis refuses."""

    attempts: int = 5
    """Tries of a batch that fails deterministically before it is dead-lettered."""
    give_up_s: float = 60.0
    """How long writes may keep failing for a passing reason before the worker exits."""
    first_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    reply_timeout_s: float = REDIS_TIMEOUT_S
    """A command (or connection) Redis leaves unanswered this long fails with a
    TimeoutError, which is retried like a refusal: a paused Redis makes the step unready
    instead of holding the write, and the worker ready, until it wakes up. A write that
    timed out may still land later; the checkpoint fences it like any replay."""


class RedisWriteFailed(RuntimeError):
    """Redis refused a batch for longer than WriteRetry.give_up_s."""


class RedisCheckpoint(Durability):
    pipelined = True

    def __init__(
        self,
        pipeline: str,
        step: StepSpec,
        redis_url: str | None,
        windows: WindowAggregator | None,
        latest: LatestTable | None,
        metrics: WorkerMetrics | None = None,
        retry: WriteRetry | None = None,
        sessions: SessionAggregator | None = None,
        watermark_fields: list[str] | None = None,
        idleness: Idleness | None = None,
        bootstrap_servers: str | None = None,
        security: KafkaClientSecurity = PLAINTEXT,
    ) -> None:
        if not redis_url:
            raise ValueError(f"step {step.name} writes Redis but no Redis URL is set")
        self.pipeline = pipeline
        self.step = step
        self.redis_url = redis_url
        self.windows = windows
        self.latest = latest
        self.sessions = sessions
        self.watermark_fields = watermark_fields or []
        """Whose minimum is the table's watermark (windows become final by it)."""
        self.metrics = metrics or WorkerMetrics(pipeline, step.name)
        self.retry = retry or WriteRetry()
        self.redis: aioredis.Redis | None = None
        self._uncommitted: Offsets = {}
        self._last_commit = 0.0
        self.fresh: dict[TopicPartition, int] = {}
        """Partitions without a checkpoint yet, with the offset their first batch starts at:
        only that batch may find the checkpoint absent."""
        self.rebuilding: dict[TopicPartition, int] = {}
        """Partitions rebuilt after lost Redis state, with the offset the step had reached."""
        self.failing: tuple[float, str] | None = None
        """Since when (monotonic) and why writes keep failing, while they do."""
        self.idleness = idleness
        self.kafka = (bootstrap_servers, security)
        """Where the emitter of window records (sink.kafka.emit) writes."""
        self.emitter: WindowEmitter | None = None
        self.emitting: asyncio.Task[None] | None = None
        """The emitter, while this worker owns partition 0 of the step's input."""
        self.leader = TopicPartition(step.from_, 0)

    async def start(self, consumer: AIOKafkaConsumer, outputs: KafkaOutputs) -> None:
        await super().start(consumer, outputs)
        timeout = self.retry.reply_timeout_s
        self.redis = aioredis.from_url(
            self.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        await self.redis.ping()
        self.table = RedisTableSink(self.redis, self.pipeline, self.step, self.watermark_fields)
        if self.step.emits_windows():
            bootstrap, security = self.kafka
            if not bootstrap:
                raise ValueError(f"step {self.step.name} emits windows but has no Kafka")
            self.emitter = WindowEmitter(self.pipeline, self.step, self.redis, bootstrap, security)

    def health(self) -> tuple[bool, str] | None:
        if self.failing is not None:
            since, why = self.failing
            return False, f"Redis refuses writes for {time.monotonic() - since:.0f}s: {why}"
        if self.rebuilding:
            return False, (
                f"rebuilding table {self.table.table} from Kafka after its Redis state was "
                f"lost ({len(self.rebuilding)} partition(s))"
            )
        return None

    async def on_assigned(self, partitions: list[TopicPartition]) -> Resume:
        assert self.redis is not None
        resume = await self._checkpoints(partitions)
        status = await self.redis.hgetall(self.table.status)
        for tp in partitions:
            if tp in resume:
                self.fresh.pop(tp, None)
                # A predecessor's rebuild this worker continues.
                reached = status.get(serving.rebuilding_field(tp.topic, tp.partition).encode())
                if reached is not None and resume[tp][0] < int(reached):
                    self.rebuilding[tp] = int(reached)
                    self._count_rebuilding()
                continue
            committed = await self.consumer.committed(tp)
            earliest = await self._earliest(tp)
            if committed is not None and committed > earliest:
                resume[tp] = await self._rebuild(tp, committed)
            else:
                self.fresh[tp] = earliest
                resume[tp] = (earliest, None)
        if self.emitter is not None and self.leader in partitions:
            self._stop_emitting()
            self.emitting = asyncio.create_task(self.emitter.run())
        return resume

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        # `fresh` stays: a batch of a revoked partition still in flight is fenced anyway.
        for tp in partitions:
            if self.rebuilding.pop(tp, None) is not None:
                self._count_rebuilding()
        if self.leader in partitions:
            # Its next owner's emitter fences this one; stopping it first spares a
            # transaction that would be aborted.
            self._stop_emitting()

    def _stop_emitting(self) -> None:
        if self.emitting is not None:
            self.emitting.cancel()
            self.emitting = None

    def _check_emitter(self) -> None:
        """An emitter that failed ends the worker (the error says why), unless a newer
        emitter fenced it: then that one moves the records."""
        task = self.emitting
        if task is None or not task.done() or task.cancelled():
            return
        self.emitting = None
        err = task.exception()
        if isinstance(err, ProducerFenced):
            log.warning("step %s: another worker's emitter took over the window records",
                        self.step.name)  # fmt: skip
        elif err is not None:
            raise err

    async def idle(self) -> None:
        self._check_emitter()
        await self._read_marks()

    async def _read_marks(self) -> None:
        """The other partitions' watermarks and activity, for window.idleTimeout."""
        if self.idleness is not None and self.idleness.stale():
            assert self.redis is not None
            self.idleness.note_marks(await self.redis.hgetall(self.table.checkpoint))

    async def write(self, results: list[PartitionResult]) -> Resume:
        self._check_emitter()
        await self.outputs.send(results)
        resume: Resume = {}
        pending = {r.partition: r for r in results}
        failures: dict[TopicPartition, int] = {}
        give_up: dict[TopicPartition, str] = {}
        backoff = self.retry.first_backoff_s
        while pending:
            batch = list(pending.values())
            outcomes = await self._apply(batch, give_up)
            passing: BaseException | None = None
            for r, outcome in zip(batch, outcomes, strict=True):
                tp = r.partition
                if isinstance(outcome, WriteOutcome):
                    del pending[tp]
                    await self._settle(r, outcome, resume)
                elif may_pass(outcome):
                    passing = outcome
                else:
                    failures[tp] = failures.get(tp, 0) + 1
                    log.error(
                        "write of %s offsets [%d, %d) failed (%d of %d): %s",
                        tp, r.rng.first, r.rng.next, failures[tp], self.retry.attempts, outcome,
                    )  # fmt: skip
                    if failures[tp] >= self.retry.attempts and tp not in give_up:
                        give_up[tp] = f"redis write failed {failures[tp]} times: {outcome}"
                        await self._dead_letter_batch(r, give_up[tp])
            if not pending:
                break
            if passing is not None:
                self._failing(passing)
            self.metrics.labels(self.metrics.write_retries).inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.retry.max_backoff_s)
        if self.failing is not None:
            log.info("Redis accepts writes again")
            self.failing = None
        self._uncommitted.update(next_offsets(results))
        if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
            await self._commit()
        await self._read_marks()
        return resume

    async def flush(self) -> None:
        if self._uncommitted:
            await self._commit()

    async def close(self) -> None:
        task, self.emitting = self.emitting, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, ProducerFenced):
                pass
            except Exception as err:  # stopping anyway; the next emitter resumes
                log.warning("step %s: window emitter ended with %r", self.step.name, err)
        if self.redis is not None:
            await self.redis.aclose()

    # -- outcomes -------------------------------------------------------------------

    async def _settle(self, r: PartitionResult, outcome: WriteOutcome, resume: Resume) -> None:
        tp = r.partition
        if outcome.status == APPLIED:
            self.fresh.pop(tp, None)
            if outcome.overflowed:
                self.metrics.labels(self.metrics.windows_invalid).inc(len(outcome.overflowed))
                log.warning(
                    "table %s: %d window aggregate(s) overflowed and are marked, not "
                    "served (_error:{aggregate}); first: key %r, window %d, %s",
                    self.table.table, len(outcome.overflowed), *outcome.overflowed[0],
                )  # fmt: skip
            target = self.rebuilding.get(tp)
            if target is not None and r.rng.next >= target:
                del self.rebuilding[tp]
                self._count_rebuilding()
                assert self.redis is not None
                await self.redis.hdel(
                    self.table.status, serving.rebuilding_field(tp.topic, tp.partition)
                )
                log.info("table %s: partition %s rebuilt up to offset %d", self.table.table,
                         tp, r.rng.next)  # fmt: skip
        elif tp not in self.consumer.assignment():
            return  # a late batch of a partition owned elsewhere now: its owner's to resolve
        elif outcome.status == LOST:
            resume[tp] = await self._rebuild(tp, r.rng.first)
        else:
            where = (await self._checkpoints([tp])).get(tp)
            if where is None:
                resume[tp] = await self._rebuild(tp, r.rng.first)
            elif where[0] != r.rng.next:  # else an earlier attempt of ours landed
                log.warning("checkpoint moved for %s; resuming at %s", tp, where)
                resume[tp] = where

    def _failing(self, err: BaseException) -> None:
        now = time.monotonic()
        if self.failing is None:
            log.error("Redis refuses writes (retrying; unready meanwhile): %s", err)
            self.failing = (now, f"{type(err).__name__}: {err}")
            return
        since = self.failing[0]
        self.failing = (since, f"{type(err).__name__}: {err}")
        if now - since > self.retry.give_up_s:
            raise RedisWriteFailed(
                f"Redis refused writes for {now - since:.0f}s (limit "
                f"{self.retry.give_up_s:.0f}s): {err}"
            ) from err

    async def _dead_letter_batch(self, r: PartitionResult, reason: str) -> None:
        """The batch cannot be written as it is: its records go to the dead-letter topic
        (before the checkpoint moves past them, so they are not lost either way)."""
        await self.outputs.send_dead(
            [DeadLetter(r.rng.topic, r.rng.partition, rec, reason) for rec in r.records]
        )
        self.metrics.labels(self.metrics.batches_dead_lettered).inc()
        log.error(
            "dead-lettered %d record(s) of %s offsets [%d, %d) and moved past them: %s",
            len(r.records), r.partition, r.rng.first, r.rng.next, reason,
        )  # fmt: skip

    # -- state ----------------------------------------------------------------------

    async def _rebuild(self, tp: TopicPartition, reached: int) -> Checkpoint:
        """The table lost this partition's contributions (Redis came back without them):
        replay the partition from the earliest offset Kafka still holds."""
        assert self.redis is not None
        earliest = await self._earliest(tp)
        self.fresh[tp] = earliest
        self.rebuilding[tp] = reached
        self._count_rebuilding()
        self.metrics.labels(self.metrics.state_rebuilds).inc()
        log.warning(
            "table %s: no Redis checkpoint for %s although the step had reached offset %d: "
            "the Redis state was lost; rebuilding from offset %d (unready meanwhile)",
            self.table.table, tp, reached, earliest,
        )  # fmt: skip
        # Hash values are strings; the offset reached is kept as its decimal text.
        status: dict[str, str] = {serving.rebuilding_field(tp.topic, tp.partition): str(reached)}
        if earliest > 0:
            # Kafka deleted the beginning: the rebuilt windows or rows from before the
            # earliest offset are incomplete, and readers are told so.
            status[serving.incomplete_field(tp.topic, tp.partition)] = serving.incomplete_value(
                earliest, int(time.time() * 1000)
            )
            log.error(
                "table %s: Kafka no longer holds offsets before %d of %s: what they held "
                "is missing from the rebuilt table (marked in %s)",
                self.table.table, earliest, tp, self.table.status,
            )  # fmt: skip
        await self.redis.hset(self.table.status, mapping=status)  # type: ignore[arg-type]
        return (earliest, None)

    def _count_rebuilding(self) -> None:
        self.metrics.labels(self.metrics.partitions_rebuilding).set(len(self.rebuilding))

    async def _earliest(self, tp: TopicPartition) -> int:
        return (await self.consumer.beginning_offsets([tp]))[tp]

    async def _commit(self) -> None:
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = time.monotonic()
        await commit_owned(self.consumer, offsets)

    async def _checkpoints(self, partitions: list[TopicPartition]) -> Resume:
        assert self.redis is not None
        saved = await load_checkpoints(self.redis, self.pipeline, self.step.name)
        found = {tp: saved.get(f"{tp.topic}:{tp.partition}") for tp in partitions}
        return {tp: position for tp, position in found.items() if position is not None}

    async def _apply(
        self, results: list[PartitionResult], give_up: dict[TopicPartition, str]
    ) -> list[WriteOutcome | BaseException]:
        """One round trip for the whole batch: window partials of several partitions
        merged into one fenced script where it can (a window's partials from four
        partitions are one update, not four: the benchmark's step spent most of its Redis
        time on those); else, and whenever that script is refused or fails for a reason
        that would not pass, one fenced script per partition, each with its outcome."""
        if (
            self.windows is not None
            and len(results) > 1
            and not give_up
            and all(isinstance(r.windows, WindowBatch) for r in results)
        ):
            outcome = await self._apply_merged(results)
            if isinstance(outcome, WriteOutcome) and outcome.status == APPLIED:
                rest: list[WriteOutcome | BaseException] = [WriteOutcome(APPLIED)]
                return [outcome, *rest * (len(results) - 1)]
            if isinstance(outcome, BaseException) and may_pass(outcome):
                return [outcome] * len(results)
        return await self._apply_each(results, give_up)

    async def _apply_merged(self, results: list[PartitionResult]) -> WriteOutcome | BaseException:
        assert self.redis is not None and self.windows is not None
        windows = self.windows
        merged: dict[tuple[str, int], Partial] = {}
        for r in results:
            assert isinstance(r.windows, WindowBatch)
            windows.merge_partials(merged, r.windows.partials)
        seen = now_ms() if self.idleness is not None else None
        positions = [
            BatchPosition(
                r.rng,
                r.watermark,  # the batch's own: see _apply_each
                starts_fresh=self.fresh.get(r.partition) == r.rng.first,
                seen_ms=seen if r.records else None,
            )
            for r in results
        ]
        updates = [
            [key, str(start), partial_to_wire(partial)] for (key, start), partial in merged.items()
        ]
        pipe = self.redis.pipeline(transaction=False)
        await self.table.apply_merged_windows(
            pipe, positions, updates, windows.aggregates, windows.size_ms, windows.retain
        )
        self.table.announce(pipe)
        try:
            reply = (await pipe.execute(raise_on_error=False))[0]
        except RedisError as err:
            return err
        return reply if isinstance(reply, BaseException) else write_outcome(reply)

    async def _apply_each(
        self, results: list[PartitionResult], give_up: dict[TopicPartition, str]
    ) -> list[WriteOutcome | BaseException]:
        """One round trip: a pipeline of one fenced script per partition; each gets its
        outcome or its error (the others are unaffected)."""
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        updates: list[list[Any]]
        # With window.idleTimeout a batch with events says when it came (steps.idleness).
        seen = now_ms() if self.idleness is not None else None
        for r in results:
            tp = r.partition
            fresh = self.fresh.get(tp) == r.rng.first
            seen_ms = seen if r.records else None
            if tp in give_up:
                await self.table.skip(pipe, r.rng, starts_fresh=fresh)
            elif isinstance(r.windows, SessionBatch) and self.sessions is not None:
                await self.table.apply_sessions(
                    pipe,
                    r.rng,
                    self.sessions.updates(r.windows),
                    self.sessions,
                    r.watermark,
                    starts_fresh=fresh,
                    seen_ms=seen_ms,
                )
            elif isinstance(r.windows, WindowBatch) and self.windows is not None:
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
                    starts_fresh=fresh,
                    seen_ms=seen_ms,
                )
            elif self.latest is not None:
                updates = [[k, ts, body] for k, (ts, body) in r.latest.items()]
                await self.table.apply_latest(
                    pipe, r.rng, updates, self.latest.expire_after_ms, starts_fresh=fresh
                )
        if self.windows is not None or self.sessions is not None:
            self.table.announce(pipe)  # its reply is not an outcome: cut off below
        try:
            replies = await pipe.execute(raise_on_error=False)
        except RedisError as err:  # the connection, not one script: all may be retried
            return [err] * len(results)
        return [
            e if isinstance(e, BaseException) else write_outcome(e) for e in replies[: len(results)]
        ]
