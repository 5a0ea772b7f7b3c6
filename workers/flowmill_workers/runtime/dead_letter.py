"""Dead letters: the original bytes of a bad event, with why and where in headers."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import ConsumerRecord

REASON_HEADER = "flowmill-reason"
MAX_REASON = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A consumed record that could not be processed, and the reason."""

    record: ConsumerRecord
    reason: str


def dead_letter_record(
    dead: DeadLetter, pipeline: str, step: str
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(value, key, headers) of the dead-letter message: the payload is kept byte for byte
    so it can be replayed once fixed; the reason and origin travel in headers."""
    r = dead.record
    headers = [
        (REASON_HEADER, dead.reason[:MAX_REASON].encode("utf-8", "replace")),
        ("flowmill-pipeline", pipeline.encode()),
        ("flowmill-step", step.encode()),
        ("flowmill-source-topic", r.topic.encode()),
        ("flowmill-source-partition", str(r.partition).encode()),
        ("flowmill-source-offset", str(r.offset).encode()),
        ("flowmill-source-timestamp", str(r.timestamp).encode()),
    ]
    return r.value, r.key, headers
