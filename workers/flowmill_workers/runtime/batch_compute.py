"""The in-memory half of a step: turns one partition's records into a PartitionResult
(window partials, latest rows, output records, dead letters) and nothing is written.

It also tracks where each owned partition stands (the next offset and the watermark),
because a batch's range and lateness decisions depend on them; the durability strategy
says where a partition resumes after an assignment or a refused write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from aiokafka import TopicPartition

from flowmill.serving import watermark_fields
from flowmill.spec import Pipeline, StepSpec
from flowmill_workers.events import BadEvent, Event, decode, encode, key_of
from flowmill_workers.runtime.dead_letter import DeadLetter
from flowmill_workers.runtime.lean_records import FetchedRecord
from flowmill_workers.sinks.redis_tables import PartitionRange
from flowmill_workers.steps import windows_columnar
from flowmill_workers.steps.correlate import Correlator
from flowmill_workers.steps.idleness import Idleness
from flowmill_workers.steps.latest import LatestTable
from flowmill_workers.steps.lookup import ReferenceTable
from flowmill_workers.steps.sessions import SessionAggregator, SessionBatch
from flowmill_workers.steps.transform import build_stages, run_stages
from flowmill_workers.steps.windows import WindowAggregator, WindowBatch

_value = attrgetter("value")

Position = tuple[int | None, int | None]
"""Where a partition stands: (next offset or None before its first batch, watermark ms)."""
Checkpoint = tuple[int, int | None]
"""A durable position: (next offset, watermark ms or None)."""


@dataclass
class PartitionResult:
    """What one partition's batch produced, before anything is written."""

    rng: PartitionRange
    records: list[FetchedRecord] = field(default_factory=list)
    """The batch's input (kept by reference: a batch that cannot be written is
    dead-lettered whole)."""
    windows: WindowBatch | SessionBatch | None = None
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


def coalesce(
    earlier: list[PartitionResult], later: list[PartitionResult], windows: WindowAggregator
) -> list[PartitionResult] | None:
    """Two window steps' batches as one, written by one script (the later batch was
    computed while the earlier one waited for the write before it): a partition in both
    becomes one result over both ranges, its window partials merged, so four partitions'
    batches of the same minutes cost the table one update per window, not four. None when
    they cannot be one: a result that is not window partials, or a partition whose later
    range does not start where its earlier one ends (it was sought meanwhile). `earlier`
    is changed in place and returned."""
    by_partition = {r.partition: r for r in earlier}
    for r in (*earlier, *later):
        if not isinstance(r.windows, WindowBatch):
            return None
    for r in later:
        e = by_partition.get(r.partition)
        if e is not None and e.rng.next != r.rng.first:
            return None
    for r in later:
        e = by_partition.get(r.partition)
        if e is None:
            earlier.append(r)
            by_partition[r.partition] = r
            continue
        assert isinstance(e.windows, WindowBatch) and isinstance(r.windows, WindowBatch)
        windows.merge_partials(e.windows.partials, r.windows.partials)
        e.windows.late += r.windows.late
        e.rng = PartitionRange(e.rng.topic, e.rng.partition, e.rng.first, r.rng.next)
        e.records = e.records + r.records
        e.outputs += r.outputs
        e.dead += r.dead
        e.rows += r.rows
        e.events_in += r.events_in
        e.events_out += r.events_out
        e.filtered += r.filtered
        if e.oldest_timestamp_ms is None or (
            r.oldest_timestamp_ms is not None and r.oldest_timestamp_ms < e.oldest_timestamp_ms
        ):
            e.oldest_timestamp_ms = r.oldest_timestamp_ms
        e.watermark = r.watermark
    return earlier


def _late_reason(watermark: int | None, ts: int | None = None) -> str:
    at = f"event time {ts} ms " if ts is not None else ""
    return f"late event: {at}past its window's end plus allowedLateness (watermark {watermark} ms)"


def _late_session_reason(watermark: int | None, ts: int) -> str:
    return (
        f"late event: event time {ts} ms is more than allowedLateness behind the "
        f"watermark ({watermark} ms)"
    )


class BatchCompute:
    """The step's stages, window or latest table and join, applied to one batch."""

    def __init__(self, pipeline: Pipeline, step: StepSpec) -> None:
        self.step = step
        self.lookup = ReferenceTable(pipeline, step) if step.lookup else None
        self.stages = build_stages(step, self.lookup.enrich if self.lookup else None)
        session = step.window is not None and step.window.type == "session"
        self.windows = WindowAggregator(step) if step.window and not session else None
        self.sessions = SessionAggregator(step) if session else None
        self.latest = LatestTable(step) if step.latest else None
        self.correlator = Correlator(pipeline, step) if step.correlate else None
        sink = step.sink
        # A kafka sink that receives the step's windows gets them from the table's
        # scripts (sinks.window_emit), not events from here.
        self.kafka_sink = sink.kafka if sink and not step.emits_windows() else None
        self.keeps_rows = bool(sink and sink.parquet)
        # Batches of plain tumbling- and hopping-window steps take the columnar path; see
        # windows_columnar.
        self.decoder: windows_columnar.ColumnDecoder | None = None
        if (
            self.windows is not None
            and self.correlator is None
            and self.kafka_sink is None
            and not self.keeps_rows
            and windows_columnar.supports(self.windows, has_stages=bool(self.stages))
        ):
            self.decoder = windows_columnar.decoder_for(self.windows)
        self._columnar_misses = 0
        """Batches in a row the columnar path gave back (see _try_columnar)."""
        self.positions: dict[TopicPartition, Position] = {}
        idle_ms = step.window.idle_timeout_ms() if step.window else 0
        self.idleness = (
            Idleness(idle_ms, [f[: -len(":wm")] for f in watermark_fields(pipeline, step)])
            if idle_ms and sink is not None and sink.redis is not None
            else None
        )
        """Set with window.idleTimeout on a window table (steps.idleness): the watermark
        that makes windows final is the table's."""

    def resume(self, tp: TopicPartition, position: Position) -> None:
        self.positions[tp] = position
        if self.idleness is not None:
            self.idleness.note_active(tp)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop the positions and join state of partitions owned elsewhere now."""
        for tp in partitions:
            self.positions.pop(tp, None)
            if self.idleness is not None:
                self.idleness.forget(tp)
        if self.correlator is not None:
            self.correlator.drop([tp for tp in partitions if tp.topic == self.step.from_])

    def partition(self, tp: TopicPartition, records: list[FetchedRecord]) -> PartitionResult:
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
        elif self.sessions is not None:
            result.windows = SessionBatch()
        if not self._try_columnar(result, records, watermark):
            self._per_event(tp, result, records, watermark)
        self.positions[tp] = (rng.next, result.watermark)
        if self.idleness is not None:
            self.idleness.note_active(tp)
        return result

    def idle_raises(self, skip: set[TopicPartition]) -> list[PartitionResult]:
        """Batches without events that raise the watermark of owned partitions idle for
        window.idleTimeout (steps.idleness); `skip`: partitions not to touch (with records
        in this fetch, or being positioned). Empty without idleTimeout."""
        if self.idleness is None:
            return []
        owned = {tp: wm for tp, (nxt, wm) in self.positions.items() if nxt is not None}
        out = []
        for tp, target in self.idleness.raises(owned, skip).items():
            nxt = self.positions[tp][0]
            assert nxt is not None
            result = PartitionResult(
                rng=PartitionRange(tp.topic, tp.partition, nxt, nxt),
                windows=WindowBatch() if self.windows is not None else SessionBatch(),
                watermark=target,
            )
            self.positions[tp] = (nxt, target)
            out.append(result)
        return out

    def _try_columnar(
        self, result: PartitionResult, records: list[FetchedRecord], watermark: int | None
    ) -> bool:
        """The batch through the columnar path, if the step has one and the batch fits.
        A step whose events never fit (text times, say) would decode every batch twice:
        after 8 misses in a row it tries one batch in 64."""
        if self.decoder is None or self.windows is None:
            return False
        misses = self._columnar_misses
        if misses >= 8 and misses % 64:
            self._columnar_misses += 1
            return False
        fast = windows_columnar.aggregate_batch(
            self.windows, self.decoder, list(map(_value, records)), watermark
        )
        if fast is None:
            self._columnar_misses += 1
            return False
        self._columnar_misses = 0
        result.windows, late, result.watermark = fast
        for i, ts, met in late:
            result.dead.append(
                DeadLetter(
                    result.rng.topic, result.rng.partition, records[i], _late_reason(met, ts)
                )
            )
        result.events_out = len(records) - len(late)
        return True

    def _per_event(
        self,
        tp: TopicPartition,
        result: PartitionResult,
        records: list[FetchedRecord],
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
                result.dead.append(DeadLetter(tp.topic, tp.partition, record, err.reason))
        if correlator is not None:
            for expired in correlator.expire(tp):
                for out in run_stages(self.stages, expired):
                    watermark = self._route(result, out, records[-1], watermark)
        result.watermark = watermark

    def _route(
        self, result: PartitionResult, event: Event, record: FetchedRecord, watermark: int | None
    ) -> int | None:
        if self.sessions is not None and isinstance(result.windows, SessionBatch):
            key = key_of(event, self.sessions.key_field)
            ts = self.sessions.event_time(event, record.timestamp)
            if self.sessions.is_late(ts, watermark):
                result.windows.late += 1
                raise BadEvent(_late_session_reason(watermark, ts))
            self.sessions.add(result.windows, key, ts, event)
            watermark = ts if watermark is None else max(watermark, ts)
        elif self.windows is not None and isinstance(result.windows, WindowBatch):
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
