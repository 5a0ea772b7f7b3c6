"""Session windows: per key, runs of events less than `gap` apart in event time.

A batch groups its events per key into local sessions; the sink's script
(flowmill_workers.sinks.redis_sessions) merges each with the key's stored sessions within
`gap` of it, in the same atomic write as the partition's checkpoint. A session is the
connected run of a key's events, whatever order (or partition) they arrive in, so a late
event may extend a session or join two into one.

With `maxDuration` events are first cut at multiples of it since the epoch: sessions are
formed within each such period, so none spans more than maxDuration and the cut points do
not depend on arrival order.

With `activeFor` an event keeps its session active for that long (a view lasts its
duration): the gap counts from the end of that activity, and a session's `last` is the
latest end of activity in it.

An event is late when its time is more than allowedLateness behind its partition's
watermark. That is what makes "final" hold: once every partition's watermark reaches a
session's last event + gap + allowedLateness, any event still accepted is at least `gap`
after the session's last event, so it can no longer join it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowmill.spec import StepSpec, duration_seconds
from flowmill_workers.events import BadEvent, Event, get_field
from flowmill_workers.steps.windows import Aggregates, partial_to_wire


@dataclass(slots=True)
class SessionBatch:
    """One partition's batch of session events."""

    events: dict[tuple[str, int], list[tuple[int, int, list[Any]]]] = field(default_factory=dict)
    """(key, period) -> [(time ms, end of its activity ms, aggregate values)]."""
    late: int = 0


class SessionAggregator(Aggregates):
    def __init__(self, step: StepSpec) -> None:
        super().__init__(step)
        session = self.window.session
        if session is None:
            raise ValueError(f"step {step.name} has no session window")
        self.gap_ms = int(duration_seconds(session.gap) * 1000)
        self.max_ms = (
            int(duration_seconds(session.max_duration) * 1000) if session.max_duration else 0
        )
        self.active_field = session.active_for

    def period(self, ts: int) -> int:
        """The start of the maxDuration period holding `ts` (0 without maxDuration)."""
        return ts - ts % self.max_ms if self.max_ms else 0

    def is_late(self, ts: int, watermark: int | None) -> bool:
        return watermark is not None and ts < watermark - self.lateness_ms

    def active_until(self, event: Event, ts: int) -> int:
        """When the event's activity ends: its time plus `activeFor` seconds."""
        if self.active_field is None:
            return ts
        value = get_field(event, self.active_field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise BadEvent(
                f"session activeFor: field {self.active_field!r} is not a number of seconds "
                f">= 0: {value!r}"
            )
        return ts + int(value * 1000)

    def add(self, batch: SessionBatch, key: str, ts: int, event: Event) -> None:
        until = self.active_until(event, ts)
        values = self.values_of(event)
        batch.events.setdefault((key, self.period(ts)), []).append((ts, until, values))

    def updates(self, batch: SessionBatch) -> list[list[Any]]:
        """The batch's local sessions for the sink: [key, first event ms, end of the last
        activity ms, partials]."""
        out: list[list[Any]] = []
        for (key, _), events in batch.events.items():
            events.sort(key=lambda e: e[0])
            first, last = events[0][0], events[0][1]
            partial = self.new_partial()
            for ts, until, values in events:
                if ts - last >= self.gap_ms:
                    out.append([key, first, last, partial_to_wire(partial)])
                    first, last, partial = ts, until, self.new_partial()
                last = max(last, until)
                self.fold(partial, values)
            out.append([key, first, last, partial_to_wire(partial)])
        return out
