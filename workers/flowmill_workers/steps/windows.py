"""Tumbling and hopping windows with aggregates, accumulated in memory for one batch.

A batch's partial aggregates per (key, window start) are applied to Redis by the sink in
one atomic script together with the partition's checkpoint, so a replayed batch is never
applied twice (see flowmill_workers.sinks.redis_tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowmill.spec import StepSpec, duration_seconds
from flowmill_workers.events import BadEvent, Event, event_time_ms, get_field

# Per-aggregate partial state in a batch:
#   count -> int, sum -> float, avg -> [sum, n], min/max -> float | None, distinct -> set
Partial = list[Any]


@dataclass(slots=True)
class WindowBatch:
    """Partial aggregates of one partition's batch, keyed by (key, window start ms)."""

    partials: dict[tuple[str, int], Partial] = field(default_factory=dict)
    late: int = 0


class Aggregates:
    """A step's aggregates: partial state, folding events in. Shared by tumbling, hopping
    and session windows."""

    def __init__(self, step: StepSpec) -> None:
        window, aggregates = step.window, step.aggregate
        if window is None or aggregates is None or step.key_by is None:
            raise ValueError(f"step {step.name} has no window, aggregate and keyBy")
        self.window = window
        self.lateness_ms = window.lateness_ms()
        self.time_field = window.event_time
        self.retain = window.retain
        self.key_field: str = step.key_by
        self.aggregates = [(name, a.op, a.field) for name, a in aggregates.items()]

    def event_time(self, event: Event, record_timestamp_ms: int) -> int:
        """Event time from the configured field, else the Kafka record's timestamp (which,
        unlike the wall clock, is the same when a batch is replayed after a crash)."""
        if self.time_field is None:
            return record_timestamp_ms
        return event_time_ms(get_field(event, self.time_field), self.time_field)

    def new_partial(self) -> Partial:
        out: Partial = []
        for _, op, _ in self.aggregates:
            if op == "count":
                out.append(0)
            elif op == "sum":
                out.append(0.0)
            elif op == "avg":
                out.append([0.0, 0])
            elif op == "distinct":
                out.append(set())
            else:
                out.append(None)
        return out

    def values_of(self, event: Event) -> list[Any]:
        """Each aggregate's input value of one event (None for count and missing fields)."""
        values: list[Any] = []
        for name, op, fld in self.aggregates:
            if op == "count":
                values.append(None)
                continue
            value = get_field(event, fld) if fld else None
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and op != "distinct" and not numeric:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise BadEvent(
                        f"aggregate {name}: field {fld!r} is not a number: {value!r}"
                    ) from None
            values.append(value)
        return values

    def fold(self, partial: Partial, values: list[Any]) -> None:
        """Add one event's values (from values_of) to a partial."""
        for i, (_, op, _) in enumerate(self.aggregates):
            value = values[i]
            if op == "count":
                partial[i] += 1
            elif value is None:
                continue
            elif op == "sum":
                partial[i] += value
            elif op == "avg":
                partial[i][0] += value
                partial[i][1] += 1
            elif op == "min":
                if partial[i] is None or value < partial[i]:
                    partial[i] = value
            elif op == "max":
                if partial[i] is None or value > partial[i]:
                    partial[i] = value
            else:
                partial[i].add(str(value))

    def merge(self, into: Partial, other: Partial) -> None:
        """Combine another batch's partial of the same window into `into` (the window's
        partials from several partitions, written as one update). Nested values are
        replaced, never changed in place, so a shallow copy of a partial may be merged
        into without touching the original."""
        for i, (_, op, _) in enumerate(self.aggregates):
            a, b = into[i], other[i]
            if op == "count" or op == "sum":
                into[i] = a + b
            elif op == "avg":
                into[i] = [a[0] + b[0], a[1] + b[1]]
            elif op == "min" or op == "max":
                if a is None or (b is not None and (b < a if op == "min" else b > a)):
                    into[i] = b
            else:
                into[i] = set(a) | set(b)

    def merge_partials(
        self, into: dict[tuple[str, int], Partial], other: dict[tuple[str, int], Partial]
    ) -> None:
        """Merge another batch's partials into `into`, window by window. A window new to
        `into` gets a shallow copy, and merge() replaces nested values, so `other` is
        never changed (a batch whose merged write is refused is written again alone)."""
        for window, partial in other.items():
            kept = into.get(window)
            if kept is None:
                into[window] = list(partial)
            else:
                self.merge(kept, partial)


class WindowAggregator(Aggregates):
    """Assigns events to tumbling or hopping windows and accumulates their aggregates."""

    def __init__(self, step: StepSpec) -> None:
        super().__init__(step)
        window = self.window
        if window.size is None:
            raise ValueError(f"step {step.name}: a session window is not tumbling or hopping")
        self.size_ms = window.size_ms()
        advance = window.advance if window.type == "hopping" else window.size
        self.advance_ms = int(duration_seconds(advance or window.size) * 1000)

    def window_starts(self, ts: int) -> list[int]:
        """Starts of every window containing `ts`, oldest first."""
        last = ts - ts % self.advance_ms
        if self.advance_ms == self.size_ms:
            return [last]
        starts = []
        start = last
        while start + self.size_ms > ts:
            starts.append(start)
            start -= self.advance_ms
        starts.reverse()
        return starts

    def add(self, batch: WindowBatch, key: str, event: Event, starts: list[int]) -> None:
        """Fold one event into the partials of the given windows."""
        values = self.values_of(event)
        for start in starts:
            partial = batch.partials.get((key, start))
            if partial is None:
                partial = batch.partials[(key, start)] = self.new_partial()
            self.fold(partial, values)

    def open_starts(self, starts: list[int], watermark: int) -> list[int]:
        """The windows still accepting events: not yet closed by the watermark."""
        return [s for s in starts if s + self.size_ms + self.lateness_ms > watermark]


def partial_to_wire(partial: Partial) -> list[Any]:
    """JSON-able partials for the sink's Lua script (sets become lists)."""
    return [sorted(p) if isinstance(p, set) else p for p in partial]
