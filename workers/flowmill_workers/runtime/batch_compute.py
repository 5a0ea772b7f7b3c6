"""The in-memory half of a step: turns one partition's records into a PartitionResult
(window partials, latest rows, output records, dead letters) and nothing is written.

It also tracks where each owned partition stands (the next offset and the watermark),
because a batch's range and lateness decisions depend on them; the durability strategy
says where a partition resumes after an assignment or a refused write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition

from flowmill.spec import Pipeline, StepSpec
from flowmill_workers.events import BadEvent, Event, decode, encode, key_of
from flowmill_workers.runtime.dead_letter import DeadLetter
from flowmill_workers.sinks.redis_tables import PartitionRange
from flowmill_workers.steps import windows_columnar
from flowmill_workers.steps.correlate import Correlator
from flowmill_workers.steps.latest import LatestTable
from flowmill_workers.steps.transform import build_stages, run_stages
from flowmill_workers.steps.windows import WindowAggregator, WindowBatch

Position = tuple[int | None, int | None]
"""Where a partition stands: (next offset or None before its first batch, watermark ms)."""
Checkpoint = tuple[int, int | None]
"""A durable position: (next offset, watermark ms or None)."""


@dataclass
class PartitionResult:
    """What one partition's batch produced, before anything is written."""

    rng: PartitionRange
    records: list[ConsumerRecord] = field(default_factory=list)
    """The batch's input (kept by reference: a batch that cannot be written is
    dead-lettered whole)."""
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

    @property
    def partition(self) -> TopicPartition:
        return TopicPartition(self.rng.topic, self.rng.partition)


def _late_reason(watermark: int | None, ts: int | None = None) -> str:
    at = f"event time {ts} ms " if ts is not None else ""
    return f"late event: {at}past its window's end plus allowedLateness (watermark {watermark} ms)"


class BatchCompute:
    """The step's stages, window or latest table and join, applied to one batch."""

    def __init__(self, pipeline: Pipeline, step: StepSpec) -> None:
        self.step = step
        self.stages = build_stages(step)
        self.windows = WindowAggregator(step) if step.window else None
        self.latest = LatestTable(step) if step.latest else None
        self.correlator = Correlator(pipeline, step) if step.correlate else None
        sink = step.sink
        self.kafka_sink = sink.kafka if sink else None
        self.keeps_rows = bool(sink and sink.parquet)
        # Batches of plain tumbling-window steps take the numpy path; see windows_columnar.
        self.columnar = (
            self.windows is not None
            and self.correlator is None
            and self.kafka_sink is None
            and windows_columnar.supports(self.windows, has_stages=bool(self.stages))
        )
        self.positions: dict[TopicPartition, Position] = {}

    def resume(self, tp: TopicPartition, position: Position) -> None:
        self.positions[tp] = position

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop the positions and join state of partitions owned elsewhere now."""
        for tp in partitions:
            self.positions.pop(tp, None)
        if self.correlator is not None:
            self.correlator.drop([tp for tp in partitions if tp.topic == self.step.from_])

    def partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> PartitionResult:
        """One partition's batch; its position moves on at once (the next batch starts
        where this one ends, even before this one is written)."""
        first, watermark = self.positions.get(tp, (None, None))
        rng = PartitionRange(
            tp.topic,
            tp.partition,
            records[0].offset if first is None else first,
            records[-1].offset + 1,
        )
        result = PartitionResult(rng=rng, records=records, events_in=len(records))
        result.oldest_timestamp_ms = records[0].timestamp
        if self.windows is not None:
            result.windows = WindowBatch()
        if not (self.columnar and self._columnar(result, records, watermark)):
            self._per_event(tp, result, records, watermark)
        self.positions[tp] = (rng.next, result.watermark)
        return result

    def _columnar(
        self, result: PartitionResult, records: list[ConsumerRecord], watermark: int | None
    ) -> bool:
        assert self.windows is not None
        fast = windows_columnar.aggregate_batch(self.windows, [r.value for r in records], watermark)
        if fast is None:
            return False
        result.windows, late, result.watermark = fast
        for i in late:
            result.dead.append(DeadLetter(records[i], _late_reason(watermark)))
        result.events_out = len(records) - len(late)
        return True

    def _per_event(
        self,
        tp: TopicPartition,
        result: PartitionResult,
        records: list[ConsumerRecord],
        watermark: int | None,
    ) -> None:
        correlator = self.correlator
        if correlator is not None:
            correlator.begin(tp)
        for record in records:
            try:
                event = decode(record.value)
                if correlator is not None:
                    events = correlator.accept(tp, record, event)
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
        if correlator is not None:
            for expired in correlator.expire(tp):
                for out in run_stages(self.stages, expired):
                    watermark = self._route(result, out, records[-1], watermark)
        result.watermark = watermark

    def _route(
        self, result: PartitionResult, event: Event, record: ConsumerRecord, watermark: int | None
    ) -> int | None:
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
            key_field = self.kafka_sink.key or self.step.key_by
            key_bytes = key_of(event, key_field).encode() if key_field else record.key
            result.outputs.append((key_bytes, encode(event)))
        if self.keeps_rows:
            result.rows.append((record.timestamp, record.offset, event))
        result.events_out += 1
        return watermark
