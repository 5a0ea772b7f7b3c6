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
import gc
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError, KafkaError

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import Pipeline, StepSpec
from flowmill.spec.topology import consumer_group
from flowmill_workers.runtime import lean_records
from flowmill_workers.runtime.batch_compute import (
    BatchCompute,
    Checkpoint,
    PartitionResult,
    coalesce,
)
from flowmill_workers.runtime.durability import WriteRetry, choose_durability
from flowmill_workers.runtime.durability.base import BatchFenced, Resume
from flowmill_workers.runtime.durability.group_fence import request_rejoin
from flowmill_workers.runtime.kafka_outputs import KafkaOutputs
from flowmill_workers.runtime.lean_records import RAW_RECORDS
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.runtime.shutdown import StopState
from flowmill_workers.steps.windows import WindowAggregator

log = logging.getLogger("flowmill.worker")

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young collections (CPython's default is 700). A batch holds some
ten thousand aiokafka records, each a tracked object, until it is written: at 700 the
collector ran dozens of times per batch, promoting them and scanning them again in the
older generations: the benchmark's window step spent 5.6 us of CPU per event with
the defaults, 4.6 us with this and the freeze below (benchmarks/bench_throughput.py)."""


def tune_gc() -> None:
    """Fewer, cheaper collections for a process that is one worker: what exists once it
    has started (modules, the manifest, its models) lives as long as it does, so it is
    frozen out of every later collection, and young collections wait for more garbage."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker connects and batches; the manifest says what it computes."""

    bootstrap_servers: str
    redis_url: str | None = None
    batch_size: int = 10_000
    """Records per fetch (max_records, as the raw aiokafka benchmark uses): against 5000,
    the benchmark's window step spent 4.35 instead of 4.96 us of CPU per event (fewer
    window updates per event and per-batch costs), at the same events/s."""
    batch_timeout_ms: int = 50
    client_id: str = "flowmill"
    write_retry: WriteRetry = field(default_factory=WriteRetry)
    security: KafkaClientSecurity = PLAINTEXT
    """TLS and SASL of every Kafka client of the worker."""


END_PROBE_S = 1.0
"""How often a worker asks for the end offsets of partitions it has not fetched yet."""
COALESCE_BATCHES = 3
"""The most fetches (of `batch_size` records) a window step computes ahead of a write in
flight, as one batch: more would only hold more records in memory (merging saturates
once every partition of the same minutes is in), and a small batch_size stays small."""


@dataclass
class _Waiting:
    """A window step's batches computed while a write was in flight, merged into one."""

    results: list[PartitionResult]
    started: float
    fetched_in: int

    def take(
        self, results: list[PartitionResult], fetched_in: int, windows: WindowAggregator, most: int
    ) -> bool:
        """Merge `results` in, if they were fetched in the same generation, the two hold at
        most `most` events and they merge."""
        if fetched_in != self.fetched_in:
            return False
        held = sum(r.events_in for r in self.results)
        if held + sum(r.events_in for r in results) > most:
            return False
        return coalesce(self.results, results, windows) is not None

    def batch(self) -> tuple[list[PartitionResult], float, int]:
        """What _hand_over writes."""
        return self.results, self.started, self.fetched_in


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
            pipeline,
            self.step,
            config.redis_url,
            self.compute,
            self.metrics,
            config.write_retry,
            bootstrap_servers=config.bootstrap_servers,
            security=config.security,
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
        self.rebalances = 0
        """Counts revocations and completed assignments: a batch fetched under an older
        count, or between the two, is never written (see _hand_over)."""
        self.rebalancing = False
        self._ends: dict[TopicPartition, int] = {}
        self._ends_asked = 0.0
        """The last end offsets asked for partitions not fetched yet, and when."""
        self.not_durable: list[list[PartitionResult]] = []
        """Batches computed and not yet written, oldest first (told if a stop times out)."""
        self.stop_state = StopState()
        self.stop_state.unflushed = self.unflushed

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
            **self.config.security.kwargs(),
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
            # The parser's records, not a ConsumerRecord each (lean_records says why).
            value_deserializer=RAW_RECORDS if lean_records.install() else None,
            **self.config.security.kwargs(),
        )
        await self.consumer.start()
        if self.compute.lookup is not None:
            await self.compute.lookup.start(self.config.bootstrap_servers, self.config.security)
        outputs = KafkaOutputs(self.producer, self.pipeline.name, self.step)
        await self.durability.start(self.consumer, outputs)
        self.consumer.subscribe(topics=self.step.input_topics(), listener=_Rebalance(self))
        tune_gc()

    async def stop(self) -> None:
        """Leave the group and close connections (the current batch is already done)."""
        state = self.stop_state
        if self.consumer is not None:
            state.phase = "leaving the consumer group"
            await self.consumer.stop()
        if self.producer is not None:
            state.phase = "closing the Kafka producer"
            await self.producer.stop()
        if self.compute.lookup is not None:
            state.phase = "closing the lookup's consumer"
            await self.compute.lookup.stop()
        state.phase = "closing the store's connections"
        await self.durability.close()
        state.phase = "stopped"

    def unflushed(self) -> list[str]:
        """Work not durable yet: batches computed or being written, and what the strategy
        buffers."""
        batches = [
            f"a batch of {sum(r.events_in for r in results)} event(s) ("
            + ", ".join(
                f"{r.rng.topic}-{r.rng.partition} offsets {r.rng.first}..{r.rng.next - 1}"
                for r in results
            )
            + ")"
            for results in list(self.not_durable)
        ]
        return batches + self.durability.unflushed()

    def ready(self) -> tuple[bool, str]:
        """Ready once the group assigned partitions and their positions were loaded."""
        if not self.assigned_once:
            return False, "waiting for a partition assignment"
        lookup = self.compute.lookup
        if lookup is not None and not lookup.loaded:
            return False, f"waiting for the lookup's {lookup.what} to have records"
        health = self.durability.health()
        if health is not None:
            return health
        return True, f"{len(self.compute.positions)} partition(s) assigned"

    # -- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; the batch in progress is finished first.

        A pipelined strategy (fenced Redis writes) gets the next batch fetched and
        computed while the previous one is written; writes stay in order, one at a time.
        A window step keeps fetching while a write is in flight, and what it computes
        meanwhile waits as one batch (batch_compute.coalesce, up to COALESCE_BATCHES
        fetches), written by one script when the write returns: Redis, not the step, was
        the window step's limit, and four partitions' batches of the same minutes cost
        it a quarter as many window updates merged.
        """
        assert self.consumer is not None
        writing: asyncio.Task[None] | None = None
        waiting: _Waiting | None = None
        windows = self.compute.windows if self.durability.pipelined else None
        lookup = self.compute.lookup
        while lookup is not None and not lookup.loaded and not stop.is_set():
            # Nothing is read before the reference has records (steps.lookup says why).
            await asyncio.sleep(0.2)
            await lookup.catch_up()
        try:
            while not stop.is_set():
                if self.assign_failed is not None:
                    raise self.assign_failed
                if writing is not None and writing.done():
                    # A failed write raises here at once, not when the next batch comes.
                    writing.result()
                    writing = None
                if waiting is not None and writing is None:
                    writing = await self._write_behind(*waiting.batch())
                    waiting = None
                batch = await self.consumer.getmany(
                    timeout_ms=self.config.batch_timeout_ms, max_records=self.config.batch_size
                )
                fetched_in = -1 if self.rebalancing else self.rebalances
                started = time.perf_counter()
                results: list[PartitionResult] = []
                if batch and lookup is not None:
                    # Every reference change committed before the fetch, applied first.
                    await lookup.catch_up()
                if batch:
                    results = [
                        self.compute.partition(tp, rs)
                        for tp, rs in batch.items()
                        if rs and tp not in self.assigning
                    ]
                # Partitions idle for window.idleTimeout: batches without events that
                # raise their watermarks, written in order with the rest (steps.idleness).
                results += self.compute.idle_raises(
                    {tp for tp, rs in batch.items() if rs} | self.assigning
                )
                if results and windows is not None:
                    self.not_durable.append(results)
                    most = COALESCE_BATCHES * self.config.batch_size
                    if waiting is None or not waiting.take(results, fetched_in, windows, most):
                        if waiting is not None:  # full, or not mergeable: written first
                            if writing is not None:
                                await writing
                            writing = await self._write_behind(*waiting.batch())
                        waiting = _Waiting(results, started, fetched_in)
                    else:
                        self.not_durable = [b for b in self.not_durable if b is not results]
                    if writing is None or writing.done():
                        if writing is not None:
                            writing.result()
                        writing = await self._write_behind(*waiting.batch())
                        waiting = None
                elif results:
                    self.not_durable.append(results)
                    if writing is not None:
                        await writing
                    writing = await self._write_behind(results, started, fetched_in)
                    if not self.durability.pipelined:
                        await writing
                elif not batch:
                    await self.durability.idle()
                await self._report_lag()
        finally:
            self.stop_state.phase = "writing the batch in flight"
            if writing is not None:
                await writing
            if waiting is not None:
                await self._hand_over(*waiting.batch())
        self.stop_state.phase = "flushing what the step holds"
        await self.durability.flush()

    async def _write_behind(
        self, results: list[PartitionResult], started: float, fetched_in: int
    ) -> asyncio.Task[None]:
        """The batch's write (_hand_over) as a task, started: a getmany that aiokafka
        answers from its buffer returns without giving the loop a turn, so a task only
        created sends nothing until the loop next waits. Measured on the benchmark step:
        its writes ran while the loop waited for them, not while it computed the next
        batches."""
        task = asyncio.create_task(self._hand_over(results, started, fetched_in))
        await asyncio.sleep(0)
        return task

    async def _hand_over(
        self, results: list[PartitionResult], started: float, fetched_in: int
    ) -> None:
        """Make a computed batch durable, then count it; a batch fetched before the last
        rebalance (or during one) is dropped instead. Its partitions were revoked
        meanwhile, and either went to another worker or were sought again to their
        durable position, which re-reads it. Writing it anyway commits offsets from
        which another owner already resumed: a Kafka-sink step wrote such batches twice
        (its offsets carry the generation this worker joined last, which the coordinator
        accepts, not the one the batch was fetched in). Nothing awaits between this check and the strategy's
        write lock, which on_revoked's settle() waits for, so no rebalance slips in.

        A batch the strategy refuses as fenced (BatchFenced: the group moved on while it
        was being written, as it does from a worker paused past its session timeout) is
        dropped too, and the worker holds its partitions and rejoins: the rejoin
        revokes them all, and whatever it is assigned resumes from the durable position."""
        if fetched_in != self.rebalances:
            self.not_durable = [b for b in self.not_durable if b is not results]
            log.info(
                "step %s dropped a batch of %d event(s) fetched before a rebalance",
                self.step.name,
                sum(r.events_in for r in results),
            )
            return
        try:
            resume = await self.durability.write(results)
        except BatchFenced as err:
            assert self.consumer is not None
            self.not_durable = [b for b in self.not_durable if b is not results]
            self.metrics.labels(self.metrics.batches_fenced).inc()
            log.warning(
                "step %s: a batch of %d event(s) was aborted, the consumer group has moved "
                "on from this worker (%s); rejoining",
                self.step.name,
                sum(r.events_in for r in results),
                err,
            )
            # Nothing more is read from partitions that may be another member's now
            # (on_assigned resumes what the rejoin assigns).
            self.consumer.pause(*self.consumer.assignment())
            request_rejoin(self.consumer)
            return
        self._resume(resume)
        # By identity: comparing batches field by field would compare every record.
        self.not_durable = [b for b in self.not_durable if b is not results]
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
        # Paused meanwhile: aiokafka keeps fetching while this listener runs, and the loop
        # would fetch (and drop) up to the whole backlog of these partitions from the
        # reset position before the seeks below, then read it all again.
        self.consumer.pause(*assigned)
        try:
            await self._position(assigned)
        except Exception as err:
            self.assign_failed = err
            raise
        finally:
            self.consumer.resume(*assigned)
        # Records fetched before these seeks may come from the old positions.
        self.rebalances += 1
        self.rebalancing = False
        self.assigning.difference_update(assigned)
        correlator = self.compute.correlator
        if correlator is not None:
            # aiokafka keeps fetching while this listener runs: hold the partitions until
            # the pending events are back, or a partner could arrive to an empty state.
            primary = [tp for tp in assigned if tp.topic == self.step.from_]
            self.consumer.pause(*assigned)
            try:
                await correlator.restore(
                    self.config.bootstrap_servers, self.config.security, primary
                )
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
        self.rebalances += 1  # no await since settle(): no write started meanwhile
        self.rebalancing = True
        self.compute.forget(revoked)
        for tp in revoked:
            self.metrics.forget_lag(tp.topic, tp.partition)
        self.durability.on_revoked(revoked)

    async def _ends_not_fetched(self) -> dict[TopicPartition, int]:
        """The end offsets of owned partitions no fetch has answered yet (aiokafka knows
        their end only from a fetch): left out, a partition just assigned would count as
        no lag, and a step looked idle with its backlog unread (`flowmill test` compared
        a step's tables before it had read one partition). Asked at most once a second."""
        assert self.consumer is not None
        unknown = [
            tp
            for tp in self.consumer.assignment()
            if tp not in self.assigning
            and (self.consumer.last_stable_offset(tp) or self.consumer.highwater(tp)) is None
        ]
        if not unknown:
            return {}
        now = time.monotonic()
        if now - self._ends_asked < END_PROBE_S:
            return {tp: self._ends[tp] for tp in unknown if tp in self._ends}
        self._ends_asked = now
        try:
            self._ends = await self.consumer.end_offsets(unknown)
        except (KafkaError, IllegalStateError) as err:  # a lag left out until the next ask
            log.debug("end offsets of %s: %s", unknown, err)
            self._ends = {}
        return self._ends

    async def _report_lag(self) -> None:
        """Lag per partition: the consumer's position, not the last record + 1, because a
        transactional input ends in a commit marker the position steps over."""
        assert self.consumer is not None
        lags: dict[TopicPartition, int] = {}
        ends = await self._ends_not_fetched()
        for tp in self.consumer.assignment():
            if tp in self.assigning:
                # Until on_assigned seeks it, its position is the consumer's reset
                # (auto_offset_reset, the end): a lag of 0 that is not true.
                continue
            high = self.consumer.last_stable_offset(tp) or self.consumer.highwater(tp)
            if high is None:
                high = ends.get(tp)
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
