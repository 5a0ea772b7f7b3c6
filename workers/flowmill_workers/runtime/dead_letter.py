"""Dead letters: the original bytes of a bad event, with why and where in headers."""

from __future__ import annotations

from dataclasses import dataclass

from flowmill.spec.topology import (
    DEAD_LETTER_MAX_REASON,
    DEAD_LETTER_ORIGIN_HEADERS,
    DEAD_LETTER_PIPELINE_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_STEP_HEADER,
    DEAD_LETTER_TIMESTAMP_HEADER,
)
from flowmill_workers.runtime.lean_records import FetchedRecord

REASON_HEADER = DEAD_LETTER_REASON_HEADER


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A consumed record that could not be processed, where it was read, and the reason."""

    topic: str
    partition: int
    record: FetchedRecord
    reason: str


def dead_letter_record(
    dead: DeadLetter, pipeline: str, step: str
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(value, key, headers) of the dead-letter message: the payload is kept byte for byte
    so it can be replayed once fixed; the reason and origin travel in headers."""
    r = dead.record
    topic_header, partition_header, offset_header = DEAD_LETTER_ORIGIN_HEADERS
    headers = [
        (REASON_HEADER, dead.reason[:DEAD_LETTER_MAX_REASON].encode("utf-8", "replace")),
        (DEAD_LETTER_PIPELINE_HEADER, pipeline.encode()),
        (DEAD_LETTER_STEP_HEADER, step.encode()),
        (topic_header, dead.topic.encode()),
        (partition_header, str(dead.partition).encode()),
        (offset_header, str(r.offset).encode()),
        (DEAD_LETTER_TIMESTAMP_HEADER, str(r.timestamp).encode()),
    ]
    return r.value, r.key, headers
