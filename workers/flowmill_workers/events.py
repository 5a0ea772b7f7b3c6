"""Events as the workers see them: decoded JSON objects, their keys, fields and times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

Event = dict[str, Any]

MAX_EVENT_BYTES = 512 * 1024
"""Larger payloads are dead-lettered: they are almost always a producer bug, and one would
stall a batch."""


class BadEvent(ValueError):
    """An event that cannot be processed; `reason` says why and goes to the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(payload: bytes | None) -> Event:
    """The JSON object in a Kafka message value, or BadEvent saying what is wrong."""
    if payload is None:
        raise BadEvent("empty message (null value)")
    if len(payload) > MAX_EVENT_BYTES:
        raise BadEvent(f"oversized payload: {len(payload)} bytes > {MAX_EVENT_BYTES}")
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise BadEvent("payload is not valid UTF-8") from None
        raise BadEvent(f"malformed JSON: {err}") from None
    if not isinstance(value, dict):
        raise BadEvent(f"expected a JSON object, got {type(value).__name__}")
    return value


def encode(event: Any) -> bytes:
    """JSON bytes of an event (orjson: datetimes and numpy values included)."""
    return orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS)


def get_field(event: Event, path: str) -> Any:
    """The value at a dotted field path, or None when any part is missing."""
    if "." not in path:
        return event.get(path)
    node: Any = event
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def key_of(event: Event, path: str) -> str:
    """The string key of an event; a missing key is a BadEvent."""
    value = get_field(event, path)
    if value is None:
        raise BadEvent(f"missing key field {path!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def event_time_ms(value: Any, field: str) -> int:
    """Epoch milliseconds of a time field: ISO 8601 text, or epoch seconds or milliseconds.

    Numbers below 10^11 are read as seconds (10^11 s is the year 5138), above as ms.
    """
    if isinstance(value, bool) or value is None:
        raise BadEvent(f"missing or invalid event time field {field!r}")
    if isinstance(value, int | float):
        return int(value * 1000) if abs(value) < 1e11 else int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                return event_time_ms(float(value), field)
            except (ValueError, BadEvent):
                raise BadEvent(f"event time field {field!r} is not a time: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise BadEvent(f"event time field {field!r} is not a time: {value!r}")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a consumed event came from, for dead-letter headers and checkpoints."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
