"""Runs one source: writes its chunks to `source.to` in Kafka transactions, each one
committed before the next starts, and stores the source's position with the records.

Why transactions rather than only an idempotent producer: a chunk's records go to several
partitions, and without a transaction a crash can leave a later record durable in one
partition while an earlier one in another partition is lost, so no single position in
the topic would be exact. With one transaction at a time, the committed records are
always a prefix of the source's output, which sources.resume reads back on restart.
Consumers of source topics must therefore read with isolation_level=read_committed (the
step runner does); a read_uncommitted reader could see records of a transaction a crash
aborted.

A Kafka error that survives the client's own retries (including being fenced by another
instance of the same source) ends the run with the error: the process exits non-zero and
is restarted, and the restart resumes exactly from the topic. Errors reading the input
(HTTP failures, bad lines) are the sources' business and never end the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import Pipeline, SourceSpec, source_transactional_id
from flowmill_workers.runtime.http import serve_worker
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.runtime.shutdown import StopState
from flowmill_workers.sources import Chunk, Source, SourceContext, build_source
from flowmill_workers.sources.base import OutRecord
from flowmill_workers.sources.resume import (
    POSITION_HEADER,
    SOURCE_HEADER,
    last_position,
    output_partitions,
    position_header,
    source_id,
)

log = logging.getLogger("flowmill.source")


@dataclass(frozen=True)
class SourceConfig:
    """How a source connects and batches; the manifest says what it reads."""

    bootstrap_servers: str
    security: KafkaClientSecurity = PLAINTEXT
    """TLS and SASL of every Kafka client of the source."""
    client_id: str = "flowmill"
    max_batch: int = 20_000
    """Most records in one transaction."""
    linger_ms: int = 20
    """How long a transaction waits for more chunks: fewer, larger transactions at low
    rates, at the cost of this much latency."""
    queue_chunks: int = 8
    """Chunks a source may read ahead while a transaction commits."""


class _End:
    """Queued after the last chunk of a source that ended."""


_END = _End()
_QueueItem = Chunk | _End | BaseException


class SourceRunner:
    """One worker process of one source."""

    def __init__(
        self,
        pipeline: Pipeline,
        source_name: str,
        config: SourceConfig,
    ) -> None:
        self.pipeline = pipeline
        self.spec: SourceSpec = pipeline.spec.source(source_name)
        self.config = config
        self.metrics = WorkerMetrics(pipeline.name, source_name)
        ctx = SourceContext(
            pipeline.name, self.spec, self.metrics, config.bootstrap_servers, config.security
        )
        self.source: Source = build_source(ctx)
        self.sid = source_id(pipeline.name, source_name)
        self.producer: AIOKafkaProducer | None = None
        self.partitions: list[int] = []
        self.seq = 0
        """Records this source has written, over all its runs."""
        self.started = False
        self.finished = asyncio.Event()
        """Set once the source ended (a replayed file, a generator's count) and all of its
        events are committed."""
        self._held: _QueueItem | None = None
        self.writing: list[Chunk] = []
        """The chunks of the transaction in progress (told if a stop times out)."""
        self.stop_state = StopState()
        self.stop_state.unflushed = self.unflushed

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Fence any predecessor, find where it stopped, and restore the source there."""
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=f"{self.config.client_id}-{self.spec.name}",
            transactional_id=source_transactional_id(self.pipeline.name, self.spec.name),
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            **self.config.security.kwargs(),
        )
        await self.producer.start()
        # An empty transaction waits for the producer id: by then the coordinator has
        # aborted a killed predecessor's open transaction, so what we read next is final.
        await self.producer.begin_transaction()
        await self.producer.commit_transaction()
        self.partitions = sorted(await output_partitions(self.producer, self.spec.to))
        await self.source.start()
        if self.source.position_in_output:
            resumed = await last_position(
                self.config.bootstrap_servers,
                self.config.security,
                self.spec.to,
                set(self.partitions),
                self.sid,
            )
            self.seq = resumed.seq
            self.source.restore(resumed.position)
            log.info(
                "source %s resumes after %d records at %s",
                self.spec.name,
                resumed.seq,
                resumed.position,
            )
        else:
            self.source.restore(None)
        self.started = True

    async def stop(self) -> None:
        """Close the source and the producer (a transaction in progress was finished)."""
        self.stop_state.phase = "closing the source"
        await self.source.close()
        if self.producer is not None:
            self.stop_state.phase = "closing the Kafka producer"
            await self.producer.stop()
        self.stop_state.phase = "stopped"

    def unflushed(self) -> list[str]:
        chunks = list(self.writing)
        if not chunks:
            return []
        records = sum(len(c.records) for c in chunks)
        return [
            f"a transaction of {records} record(s) after record {self.seq} of source "
            f"{self.spec.name} (not committed)"
        ]

    def ready(self) -> tuple[bool, str]:
        if not self.started:
            return False, "finding where the source stopped"
        if self.finished.is_set():
            return True, f"finished: {self.seq} records written"
        return True, f"running, {self.seq} records written"

    # -- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write the source's chunks until `stop` is set or the source ends; then wait for
        `stop` (a finished source stays up, so a Deployment does not restart it)."""
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue(maxsize=self.config.queue_chunks)
        pump = asyncio.create_task(self._pump(queue), name=f"source-{self.spec.name}")
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                item = await self._next(queue, stopped)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _End):
                    self.finished.set()
                    log.info("source %s finished after %d records", self.spec.name, self.seq)
                    await stopped
                    return
                await self._write(await self._gather(item, queue))
        finally:
            pump.cancel()
            stopped.cancel()
            await asyncio.gather(pump, stopped, return_exceptions=True)

    async def _pump(self, queue: asyncio.Queue[_QueueItem]) -> None:
        try:
            async for chunk in self.source.chunks():
                await queue.put(chunk)
            await queue.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await queue.put(err)

    async def _next(
        self, queue: asyncio.Queue[_QueueItem], stopped: asyncio.Task[bool]
    ) -> _QueueItem | None:
        """The next queued item, or None once `stop` is set."""
        if stopped.done():
            return None
        if self._held is not None:
            item, self._held = self._held, None
            return item
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def _gather(self, first: Chunk, queue: asyncio.Queue[_QueueItem]) -> list[Chunk]:
        """`first` and whatever follows within linger_ms, up to max_batch records."""
        chunks, size = [first], len(first.records)
        deadline = time.monotonic() + self.config.linger_ms / 1000
        while size < self.config.max_batch:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if not isinstance(item, Chunk):
                self._held = item  # the end or an error: after this transaction
                break
            chunks.append(item)
            size += len(item.records)
        return chunks

    async def _write(self, chunks: list[Chunk]) -> None:
        """One transaction: every record of `chunks`, their positions, the source's hook."""
        producer = self.producer
        assert producer is not None
        started = time.perf_counter()
        topic, seq = self.spec.to, self.seq
        keep_position = self.source.position_in_output
        plain = [(SOURCE_HEADER, self.sid)]
        self.writing = chunks
        self.stop_state.phase = "committing a transaction"
        await producer.begin_transaction()
        try:
            batches = _PartitionBatches(producer, topic, self.partitions, plain)
            for chunk in chunks:
                seq += len(chunk.records)
                for key, value, timestamp_ms in chunk.records:
                    await batches.append(key, value, timestamp_ms)
            # The transaction's last record in each partition carries where the source
            # stands after the whole transaction (record-less chunks, such as skipped bad
            # lines, included); sources.resume reads it back.
            final = plain
            if keep_position:
                final = [*plain, (POSITION_HEADER, position_header(seq, chunks[-1].position))]
            await batches.flush(final)
            await self.source.before_commit(producer, chunks[-1].position)
            await producer.commit_transaction()
        except Exception:
            log.exception("source %s: writing to %s failed", self.spec.name, topic)
            raise
        written, self.seq = seq - self.seq, seq
        self.writing = []
        self.stop_state.phase = "running"
        labels = (self.pipeline.name, self.spec.name)
        self.metrics.events_out.labels(*labels).inc(written)
        self.metrics.batch_seconds.labels(*labels).observe(time.perf_counter() - started)
        await self.source.after_commit(chunks[-1].position)


class _PartitionBatches:
    """Fills one record batch per partition and hands full ones to the producer.

    Why not producer.send() per record: each call is a coroutine, a future and a
    partition lookup, about half of the cost of a record at high rates. Partitions are
    chosen by the producer's own default partitioner (Java-compatible murmur2 of the key),
    so a key lands where any other Kafka client would put it; batches of one partition are
    queued in order, so the topic keeps the source's order per partition.

    The last record of each partition is held back until flush(), which appends it with
    the final headers: one position per partition and transaction, not per record.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        partitions: list[int],
        headers: list[tuple[str, bytes]],
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.headers = headers
        self.partitioner = DefaultPartitioner()
        self.open: dict[int, BatchBuilder] = {}
        self.held: dict[int, OutRecord] = {}
        self.sent: list[asyncio.Future[object]] = []

    async def append(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int | None
    ) -> None:
        partition = self.partitioner(key, self.partitions, self.partitions)
        previous = self.held.get(partition)
        self.held[partition] = (key, value, timestamp_ms)
        if previous is not None:
            await self._add(partition, previous, self.headers)

    async def flush(self, final_headers: list[tuple[str, bytes]]) -> None:
        """Append the held records with `final_headers`, send every batch and wait until
        all are acknowledged."""
        for partition, record in self.held.items():
            await self._add(partition, record, final_headers)
        self.held.clear()
        for partition, batch in self.open.items():
            await self._send(partition, batch)
        self.open.clear()
        await asyncio.gather(*self.sent)

    async def _add(
        self, partition: int, record: OutRecord, headers: list[tuple[str, bytes]]
    ) -> None:
        key, value, timestamp_ms = record
        batch = self.open.get(partition)
        if batch is None:
            batch = self.open[partition] = self.producer.create_batch()
        elif batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers):
            return
        else:
            await self._send(partition, batch)
            batch = self.open[partition] = self.producer.create_batch()
        # An empty batch always takes one record, however large.
        batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers)

    async def _send(self, partition: int, batch: BatchBuilder) -> None:
        batch.close()
        self.sent.append(await self.producer.send_batch(batch, self.topic, partition=partition))


async def run_source(
    pipeline: Pipeline,
    source_name: str,
    bootstrap_servers: str,
    stop_event: asyncio.Event,
    metrics_port: int | None,
) -> None:
    """What `flowmill worker --source NAME` runs: the source, and /metrics, /healthz and
    /readyz on `metrics_port` when one is given (0 picks a free port)."""
    runner = SourceRunner(pipeline, source_name, SourceConfig(bootstrap_servers))
    await serve_worker(runner, stop_event, metrics_port)
