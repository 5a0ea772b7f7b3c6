"""Runs one step: consume a batch, process it in memory, make its outputs durable, and
only then move the step's position forward.

Exactness comes from where the position lives:
- a step with a Redis sink keeps its position in Redis, written by the same atomic script
  as the data (see sinks.redis_tables), so a replayed batch is recognised and skipped;
- a step whose outputs are Kafka topics writes them and its consumer offsets in one Kafka
  transaction;
- a Parquet step names each file after the partition and first offset it holds, so a
  replay overwrites the same file, and commits offsets only after the file is written.
Dead letters are at-least-once: a crash between sending one and committing may repeat it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from flowmill.spec import Pipeline, StepSpec
from flowmill_workers.events import BadEvent, Event, decode, encode, key_of
from flowmill_workers.runtime.dead_letter import DeadLetter, dead_letter_record
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.sinks.parquet_lake import ParquetLake
from flowmill_workers.sinks.redis_tables import PartitionRange, RedisTableSink, load_checkpoints
from flowmill_workers.steps import windows_columnar
from flowmill_workers.steps.correlate import Correlator
from flowmill_workers.steps.latest import LatestTable
from flowmill_workers.steps.transform import build_stages, run_stages
from flowmill_workers.steps.windows import WindowAggregator, WindowBatch, partial_to_wire

log = logging.getLogger("flowmill.worker")

COMMIT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker connects and batches; the manifest says what it computes."""

    bootstrap_servers: str
    redis_url: str | None = None
    batch_size: int = 5000
    batch_timeout_ms: int = 50
    client_id: str = "flowmill"


def _late_reason(watermark: int | None, ts: int | None = None) -> str:
    at = f"event time {ts} ms " if ts is not None else ""
    return f"late event: {at}past its window's end plus allowedLateness (watermark {watermark} ms)"


def group_id(pipeline: str, step: str) -> str:
    """The consumer group of a step: one per step, so each scales on its own lag."""
    return f"flowmill.{pipeline}.{step}"


@dataclass
class PartitionResult:
    """What one partition's batch produced, before anything is written."""

    rng: PartitionRange
    windows: WindowBatch | None = None
    latest: dict[str, tuple[int, str]] = field(default_factory=dict)
    outputs: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    rows: list[tuple[int, int, Event]] = field(default_factory=list)
    events_in: int = 0
    events_out: int = 0
    filtered: int = 0
    oldest_timestamp_ms: int | None = None
    watermark: int | None = None  # after this batch; checkpointed with its offsets


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runner.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.runner.on_assigned(list(assigned))


class StepRunner:
    """One worker process of one step."""

    def __init__(self, pipeline: Pipeline, step_name: str, config: WorkerConfig) -> None:
        self.pipeline = pipeline
        self.step: StepSpec = pipeline.spec.step(step_name)
        self.config = config
        self.metrics = WorkerMetrics(pipeline.name, step_name)
        self.group = group_id(pipeline.name, step_name)
        step = self.step
        self.stages = build_stages(step)
        self.windows = WindowAggregator(step) if step.window else None
        self.latest = LatestTable(step) if step.latest else None
        self.correlator = Correlator(pipeline, step) if step.correlate else None
        sink = step.sink
        self.kafka_sink = sink.kafka if sink else None
        self.uses_redis = bool(sink and sink.redis)
        self.transactional = (
            not self.uses_redis and sink is not None and sink.parquet is None
        ) or self.correlator is not None
        self.dead_topic = step.dead_letter_topic()
        self.pipelined = self.uses_redis and not self.transactional
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._last_commit = 0.0
        # Batches of plain tumbling-window steps take the numpy path; see windows_columnar.
        self.columnar = (
            self.windows is not None
            and self.correlator is None
            and self.kafka_sink is None
            and windows_columnar.supports(self.windows, has_stages=bool(self.stages))
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.redis: aioredis.Redis | None = None
        self.table: RedisTableSink | None = None
        self.lake = ParquetLake(pipeline.name, step) if sink and sink.parquet else None
        self.expected: dict[TopicPartition, int | None] = {}
        self.watermarks: dict[TopicPartition, int | None] = {}
        self.assigned_once = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Redis and Kafka and join the step's consumer group."""
        if self.uses_redis:
            if not self.config.redis_url:
                raise ValueError(f"step {self.step.name} writes Redis but no Redis URL is set")
            self.redis = aioredis.from_url(self.config.redis_url)
            await self.redis.ping()
            self.table = RedisTableSink(self.redis, self.pipeline.name, self.step)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=f"{self.config.client_id}-{self.step.name}",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            transactional_id=self._transactional_id() if self.transactional else None,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=f"{self.config.client_id}-{self.step.name}",
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # A join needs partition p of both topics in one worker; the range assignor
            # gives co-partitioned topics the same partition numbers per member.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        )
        await self.consumer.start()
        self.consumer.subscribe(topics=self.step.input_topics(), listener=_Rebalance(self))

    def _transactional_id(self) -> str:
        # Stable per pod (the hostname) so a restarted worker fences its predecessor's
        # open transaction instead of waiting for it to time out.
        return f"{self.group}.{os.environ.get('HOSTNAME', socket.gethostname())}"

    async def stop(self) -> None:
        """Leave the group and close connections (the current batch is already done)."""
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.redis is not None:
            await self.redis.aclose()

    def ready(self) -> tuple[bool, str]:
        """Ready once the group assigned partitions and their checkpoints were loaded."""
        if not self.assigned_once:
            return False, "waiting for a partition assignment"
        return True, f"{len(self.expected)} partition(s) assigned"

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; the batch in progress is finished first.

        For Redis steps the next batch is fetched and computed while the previous one is
        being written: writes stay in order (one at a time), and each is fenced by its
        partition's checkpoint, so overlapping them with computation is safe.
        """
        assert self.consumer is not None
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=self.config.batch_timeout_ms, max_records=self.config.batch_size
                )
                if batch:
                    started = time.perf_counter()
                    results = self.prepare(batch)
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self.finish(results, started))
                    if not self.pipelined:
                        await writing
                elif self.lake is not None:
                    await self._flush_lake(self.lake.due())
                await self._report_lag()
        finally:
            if writing is not None:
                await writing
        if self._uncommitted:
            await self._commit(self._uncommitted)
            self._uncommitted = {}
        if self.lake is not None:
            await self._flush_lake(list(self.lake.buffers))

    # -- partitions -----------------------------------------------------------------

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Resume each partition where the durable outputs say it stopped."""
        assert self.consumer is not None
        primary = [tp for tp in assigned if tp.topic == self.step.from_]
        checkpoints = {}
        if self.redis is not None:
            checkpoints = await load_checkpoints(self.redis, self.pipeline.name, self.step.name)
        for tp in assigned:
            saved = checkpoints.get(f"{tp.topic}:{tp.partition}")
            if saved is not None:
                self.consumer.seek(tp, saved[0])
                self.expected[tp], self.watermarks[tp] = saved
            else:
                self.expected[tp], self.watermarks[tp] = None, None
        if self.correlator is not None:
            # aiokafka keeps fetching while this listener runs: hold the partitions until
            # the pending events are back, or a partner could arrive to an empty state.
            self.consumer.pause(*assigned)
            try:
                await self.correlator.restore(self.config.bootstrap_servers, primary)
            finally:
                self.consumer.resume(*assigned)
        if self.lake is not None:
            for tp in assigned:
                committed = await self.consumer.committed(tp)
                removed = await asyncio.to_thread(
                    self.lake.discard_uncommitted, tp.topic, tp.partition, committed or 0
                )
                if removed:
                    log.info("removed %d uncommitted lake file(s) of %s", removed, tp)
        self.metrics.labels(self.metrics.partitions).set(len(self.expected))
        self.assigned_once = True
        log.info("step %s assigned %s", self.step.name, sorted(map(str, assigned)))

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.expected.pop(tp, None)
            self.watermarks.pop(tp, None)
        if self.correlator is not None:
            self.correlator.drop([tp for tp in revoked if tp.topic == self.step.from_])

    # -- one batch ------------------------------------------------------------------

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Process a batch and make it durable."""
        await self.finish(self.prepare(batch), time.perf_counter())

    def prepare(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> list[PartitionResult]:
        """Compute a batch's outputs in memory; nothing is written yet."""
        return [self._process_partition(tp, records) for tp, records in batch.items() if records]

    async def finish(self, results: list[PartitionResult], started: float) -> None:
        """Make a prepared batch durable, then count it."""
        await self._make_durable(results)
        m = self.metrics
        now_ms = time.time() * 1000
        for r in results:
            m.labels(m.events_in).inc(r.events_in)
            m.labels(m.events_out).inc(r.events_out)
            m.labels(m.events_filtered).inc(r.filtered)
            m.labels(m.events_failed).inc(len(r.dead))
            if r.windows is not None:
                m.labels(m.events_late).inc(r.windows.late)
            if r.oldest_timestamp_ms is not None:
                m.labels(m.end_to_end_seconds).observe(
                    max(0.0, now_ms - r.oldest_timestamp_ms) / 1000
                )
        m.labels(m.batch_seconds).observe(time.perf_counter() - started)

    def _process_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> PartitionResult:
        first = self.expected.get(tp)
        rng = PartitionRange(
            tp.topic,
            tp.partition,
            records[0].offset if first is None else first,
            records[-1].offset + 1,
        )
        result = PartitionResult(rng=rng, events_in=len(records))
        # The next batch starts where this one ends, even before this one is written;
        # a failed (fenced) write resyncs from Redis.
        self.expected[tp] = rng.next
        result.oldest_timestamp_ms = records[0].timestamp
        if self.windows is not None:
            result.windows = WindowBatch()
        if self.correlator is not None:
            self.correlator.begin(tp)
        watermark = self.watermarks.get(tp)
        if self.columnar and self.windows is not None:
            fast = windows_columnar.aggregate_batch(
                self.windows, [r.value for r in records], watermark
            )
            if fast is not None:
                result.windows, late, self.watermarks[tp] = fast
                result.watermark = self.watermarks[tp]
                for i in late:
                    result.dead.append(DeadLetter(records[i], _late_reason(watermark)))
                result.events_out = len(records) - len(late)
                return result
        for record in records:
            try:
                event = decode(record.value)
                if self.correlator is not None:
                    events = self.correlator.accept(tp, record, event)
                    if not events:
                        continue  # waiting for its partner: neither output nor filtered
                else:
                    events = [event]
                produced = [out for e in events for out in run_stages(self.stages, e)]
                if not produced:
                    result.filtered += 1
                    continue
                for out in produced:
                    watermark = self._route(result, out, record, watermark)
            except BadEvent as err:
                result.dead.append(DeadLetter(record, err.reason))
        if self.correlator is not None:
            for expired in self.correlator.expire(tp):
                for out in run_stages(self.stages, expired):
                    watermark = self._route(result, out, records[-1], watermark)
        self.watermarks[tp] = result.watermark = watermark
        return result

    def _route(
        self, result: PartitionResult, event: Event, record: ConsumerRecord, watermark: int | None
    ) -> int | None:
        step = self.step
        if self.windows is not None and result.windows is not None:
            key = key_of(event, self.windows.key_field)
            ts = self.windows.event_time(event, record.timestamp)
            starts = self.windows.window_starts(ts)
            open_starts = (
                starts if watermark is None else self.windows.open_starts(starts, watermark)
            )
            if not open_starts:
                result.windows.late += 1
                raise BadEvent(_late_reason(watermark, ts))
            self.windows.add(result.windows, key, event, open_starts)
            watermark = ts if watermark is None else max(watermark, ts)
        elif self.latest is not None:
            key = key_of(event, self.latest.key_field)
            ts = self.latest.event_time(event, record.timestamp)
            result.latest[key] = (ts, self.latest.serialize(event))
        if self.kafka_sink is not None:
            key_field = self.kafka_sink.key or step.key_by
            key_bytes = key_of(event, key_field).encode() if key_field else record.key
            result.outputs.append((key_bytes, encode(event)))
        if self.lake is not None:
            result.rows.append((record.timestamp, record.offset, event))
        result.events_out += 1
        return watermark

    async def _make_durable(self, results: list[PartitionResult]) -> None:
        assert self.producer is not None and self.consumer is not None
        offsets = {
            TopicPartition(r.rng.topic, r.rng.partition): OffsetAndMetadata(r.rng.next, "")
            for r in results
        }
        if self.transactional:
            async with self.producer.transaction():
                await self._send(results)
                if self.correlator is not None:
                    await self.correlator.write_changelog(self.producer)
                await self.producer.send_offsets_to_transaction(offsets, self.group)
            return
        await self._send(results)
        if self.lake is not None:
            for r in results:
                self.lake.add(r.rng.topic, r.rng.partition, r.rng.first, r.rng.next, r.rows)
            await self._flush_lake(self.lake.due())
            return
        if self.table is not None and self.redis is not None:
            await self._apply_tables(results)
            # Redis holds the authoritative position; the Kafka commit only feeds lag
            # (for the HPA), so once a second is plenty and spares a round trip per batch.
            self._uncommitted.update(offsets)
            if time.monotonic() - self._last_commit < COMMIT_INTERVAL_S:
                return
            offsets, self._uncommitted = self._uncommitted, {}
        await self._commit(offsets)

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self.consumer is not None
        owned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in owned}
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as err:
            log.warning("offset commit failed (rebalance?): %s", err)

    async def _flush_lake(self, partitions: list[tuple[str, int]]) -> None:
        """Write due Parquet files, then commit exactly the offsets they cover."""
        assert self.lake is not None and self.consumer is not None
        if not partitions:
            return
        written = await self.lake.flush(partitions)
        owned = self.consumer.assignment()
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(nxt, "")
            for (t, p), nxt in written.items()
            if TopicPartition(t, p) in owned
        }
        if offsets:
            await self.consumer.commit(offsets)

    async def _send(self, results: list[PartitionResult]) -> None:
        assert self.producer is not None
        futures = []
        for r in results:
            if self.kafka_sink is not None:
                for key, value in r.outputs:
                    futures.append(await self.producer.send(self.kafka_sink.topic, value, key=key))
            if r.dead and self.dead_topic is None:
                log.warning(
                    "dropped %d bad event(s) (step has no deadLetter topic); first: %s",
                    len(r.dead),
                    r.dead[0].reason,
                )
                continue
            for dead in r.dead:
                value, key, headers = dead_letter_record(dead, self.pipeline.name, self.step.name)
                futures.append(
                    await self.producer.send(self.dead_topic, value, key=key, headers=headers)
                )
        if futures:
            await asyncio.gather(*futures)

    async def _apply_tables(self, results: list[PartitionResult]) -> None:
        assert self.table is not None and self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        for r in results:
            if r.windows is not None and self.windows is not None:
                updates = [
                    [key, str(start), partial_to_wire(partial)]
                    for (key, start), partial in r.windows.partials.items()
                ]
                # The batch's own watermark, not the live one: with pipelining the live
                # one may already include the next batch, and a crash would then replay
                # that batch against a watermark that makes its events look late.
                watermark = r.watermark
                await self.table.apply_windows(
                    pipe,
                    r.rng,
                    updates,
                    self.windows.aggregates,
                    self.windows.size_ms,
                    self.windows.retain,
                    watermark,
                )
            elif self.latest is not None:
                updates = [[k, ts, body] for k, (ts, body) in r.latest.items()]
                await self.table.apply_latest(pipe, r.rng, updates, self.latest.expire_after_ms)
        applied = await pipe.execute()
        for r, ok in zip(results, applied, strict=True):
            if not ok:
                await self._resync(TopicPartition(r.rng.topic, r.rng.partition))

    async def _resync(self, tp: TopicPartition) -> None:
        """Another worker moved this partition on (we lost it in a rebalance), or this
        batch was already applied: take the durable position and continue from there."""
        assert self.redis is not None and self.consumer is not None
        saved = (await load_checkpoints(self.redis, self.pipeline.name, self.step.name)).get(
            f"{tp.topic}:{tp.partition}"
        )
        log.warning("checkpoint moved for %s; resuming at %s", tp, saved)
        if saved is not None and tp in self.consumer.assignment():
            self.consumer.seek(tp, saved[0])
            self.expected[tp], self.watermarks[tp] = saved

    async def _report_lag(self) -> None:
        """Lag per partition: the consumer's position, not the last record + 1, because a
        transactional input ends in a commit marker the position steps over."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            high = self.consumer.last_stable_offset(tp) or self.consumer.highwater(tp)
            if high is None:
                continue
            position = await self.consumer.position(tp)
            self.metrics.lag(tp.topic, tp.partition, max(0, high - position))
