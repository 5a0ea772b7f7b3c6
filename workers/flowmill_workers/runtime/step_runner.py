"""Runs one step: fetch a batch, compute it in memory (runtime.batch_compute), hand it to
the step's durability strategy (runtime.durability), which writes it and moves the step's
position forward, then count it.

The loop does not know where the position lives; the strategy, picked once from the step
spec, does: a Kafka transaction, a Redis checkpoint fenced per partition, or Parquet
files named after their offsets. Dead letters are at-least-once everywhere: a crash
between sending one and the position moving may repeat it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError

from flowmill.spec import Pipeline, StepSpec
from flowmill.spec.topology import consumer_group
from flowmill_workers.runtime.batch_compute import BatchCompute, Checkpoint, PartitionResult
from flowmill_workers.runtime.durability import WriteRetry, choose_durability
from flowmill_workers.runtime.durability.base import Resume
from flowmill_workers.runtime.kafka_outputs import KafkaOutputs
from flowmill_workers.runtime.metrics import WorkerMetrics

log = logging.getLogger("flowmill.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker connects and batches; the manifest says what it computes."""

    bootstrap_servers: str
    redis_url: str | None = None
    batch_size: int = 5000
    batch_timeout_ms: int = 50
    client_id: str = "flowmill"
    write_retry: WriteRetry = field(default_factory=WriteRetry)


class _Rebalance(ConsumerRebalanceListener):
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
        self.group = consumer_group(pipeline.name, step_name)
        self.compute = BatchCompute(pipeline, self.step)
        self.durability = choose_durability(
            pipeline, self.step, config.redis_url, self.compute, self.metrics, config.write_retry
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.assigned_once = False
        self.assigning: set[TopicPartition] = set()
        """Partitions whose start position is being decided: the loop, which runs
        concurrently with the rebalance listener, leaves their records alone."""
        self.assign_failed: BaseException | None = None
        """Why deciding start positions failed: aiokafka only logs a listener's error, so
        the loop raises it (the partitions stay in `assigning`, never read unpositioned)."""

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka (and the strategy to its store) and join the consumer group."""
        client_id = f"{self.config.client_id}-{self.step.name}"
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            transactional_id=self.durability.transactional_id,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=client_id,
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
        outputs = KafkaOutputs(self.producer, self.pipeline.name, self.step)
        await self.durability.start(self.consumer, outputs)
        self.consumer.subscribe(topics=self.step.input_topics(), listener=_Rebalance(self))

    async def stop(self) -> None:
        """Leave the group and close connections (the current batch is already done)."""
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.durability.close()

    def ready(self) -> tuple[bool, str]:
        """Ready once the group assigned partitions and their positions were loaded."""
        if not self.assigned_once:
            return False, "waiting for a partition assignment"
        health = self.durability.health()
        if health is not None:
            return health
        return True, f"{len(self.compute.positions)} partition(s) assigned"

    # -- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; the batch in progress is finished first.

        A pipelined strategy (fenced Redis writes) gets the next batch fetched and
        computed while the previous one is written; writes stay in order, one at a time.
        """
        assert self.consumer is not None
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                if self.assign_failed is not None:
                    raise self.assign_failed
                if writing is not None and writing.done():
                    # A failed write raises here at once, not when the next batch comes.
                    writing.result()
                    writing = None
                batch = await self.consumer.getmany(
                    timeout_ms=self.config.batch_timeout_ms, max_records=self.config.batch_size
                )
                started = time.perf_counter()
                results: list[PartitionResult] = []
                if batch:
                    results = [
                        self.compute.partition(tp, rs)
                        for tp, rs in batch.items()
                        if rs and tp not in self.assigning
                    ]
                if results:
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._hand_over(results, started))
                    if not self.durability.pipelined:
                        await writing
                elif not batch:
                    await self.durability.idle()
                await self._report_lag()
        finally:
            if writing is not None:
                await writing
        await self.durability.flush()

    async def _hand_over(self, results: list[PartitionResult], started: float) -> None:
        """Make a computed batch durable, then count it."""
        self._resume(await self.durability.write(results))
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

    def _resume(self, resume: Resume) -> None:
        """Continue partitions still owned from the positions the strategy holds."""
        assert self.consumer is not None
        owned = self.consumer.assignment()
        for tp, checkpoint in resume.items():
            if tp in owned:
                self._seek(tp, checkpoint)

    def _seek(self, tp: TopicPartition, checkpoint: Checkpoint) -> None:
        assert self.consumer is not None
        self.consumer.seek(tp, checkpoint[0])
        self.compute.resume(tp, checkpoint)

    # -- partitions -----------------------------------------------------------------

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Resume each partition where the durable outputs say it stopped."""
        assert self.consumer is not None
        self.assigning.update(assigned)
        try:
            await self._position(assigned)
        except Exception as err:
            self.assign_failed = err
            raise
        self.assigning.difference_update(assigned)
        correlator = self.compute.correlator
        if correlator is not None:
            # aiokafka keeps fetching while this listener runs: hold the partitions until
            # the pending events are back, or a partner could arrive to an empty state.
            primary = [tp for tp in assigned if tp.topic == self.step.from_]
            self.consumer.pause(*assigned)
            try:
                await correlator.restore(self.config.bootstrap_servers, primary)
            finally:
                self.consumer.resume(*assigned)
        self.metrics.labels(self.metrics.partitions).set(len(self.compute.positions))
        self.assigned_once = True
        log.info("step %s assigned %s", self.step.name, sorted(map(str, assigned)))

    async def _position(self, assigned: list[TopicPartition]) -> None:
        """Seek every assigned partition where it continues: the strategy's position, else
        the committed offset (records the loop skipped meanwhile are fetched again)."""
        assert self.consumer is not None
        await self.durability.settle()
        for tp in assigned:
            self.compute.resume(tp, (None, None))
        resume = await self.durability.on_assigned(assigned)
        targets: dict[TopicPartition, int] = {}
        for tp in assigned:
            if tp not in resume:
                committed = await self.consumer.committed(tp)
                if committed is None:
                    committed = (await self.consumer.beginning_offsets([tp]))[tp]
                targets[tp] = committed
        # All seeks after the last await: records of a partition sought early and fetched
        # while another is still looked up would be skipped by the loop, then lost.
        for tp, checkpoint in resume.items():
            self._seek(tp, checkpoint)
        for tp, offset in targets.items():
            self.consumer.seek(tp, offset)

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        # A transaction still completing would otherwise commit offsets after the next
        # owner (maybe this worker, rejoining) read the previous ones: a duplicate.
        await self.durability.settle()
        self.compute.forget(revoked)
        for tp in revoked:
            self.metrics.forget_lag(tp.topic, tp.partition)
        self.durability.on_revoked(revoked)

    async def _report_lag(self) -> None:
        """Lag per partition: the consumer's position, not the last record + 1, because a
        transactional input ends in a commit marker the position steps over."""
        assert self.consumer is not None
        lags: dict[TopicPartition, int] = {}
        for tp in self.consumer.assignment():
            if tp in self.assigning:
                # Until on_assigned seeks it, its position is the consumer's reset
                # (auto_offset_reset, the end): a lag of 0 that is not true.
                continue
            high = self.consumer.last_stable_offset(tp) or self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await self.consumer.position(tp)
            except IllegalStateError:
                continue  # revoked while we waited for its position
            lags[tp] = max(0, high - position)
        # position() can wait through a rebalance: report only what is still owned (and
        # positioned) after the last await, or a partition revoked meanwhile would come
        # back and stay.
        owned = self.consumer.assignment()
        self.metrics.report_lag(
            {
                (tp.topic, tp.partition): lag
                for tp, lag in lags.items()
                if tp in owned and tp not in self.assigning
            }
        )
