"""Latest-state tables: each key's most recent event (vehicle positions, station status)."""

from __future__ import annotations

from flowmill.spec import StepSpec, duration_seconds
from flowmill_workers.events import Event, encode, get_field
from flowmill_workers.steps.transform import compile_expression


class LatestTable:
    """Turns events into (key, event time, JSON body or "" for a deletion)."""

    def __init__(self, step: StepSpec) -> None:
        latest = step.latest
        if latest is None or step.key_by is None:
            raise ValueError(f"step {step.name} has no latest and keyBy")
        self.key_field = step.key_by
        self.fields = latest.fields
        self.expire_after_ms = (
            int(duration_seconds(latest.expire_after) * 1000) if latest.expire_after else 0
        )
        self.delete_when = compile_expression(latest.delete_when) if latest.delete_when else None

    def event_time(self, event: Event, record_timestamp_ms: int) -> int:
        """The Kafka record time: deterministic on replay, and what `expireAfter` uses."""
        return record_timestamp_ms

    def row(self, event: Event) -> Event | None:
        """What the table keeps of the event, or None when `deleteWhen` says the key is
        gone (a lookup of this table applies the same)."""
        if self.delete_when is not None and self.delete_when(event) is True:
            return None
        if self.fields is not None:
            event = {f: get_field(event, f) for f in self.fields}
        return event

    def serialize(self, event: Event) -> str:
        """The stored body, or "" when `deleteWhen` says the key is gone."""
        row = self.row(event)
        return "" if row is None else encode(row).decode()
