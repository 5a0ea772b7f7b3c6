"""The step consumer's records as aiokafka's record parser makes them, without a
ConsumerRecord per record.

Why: with the window step's decoding columnar, aiokafka's getmany was most of the step's
CPU, and half of that was the Python wrapping of each parsed record (a ConsumerRecord of
11 fields, the lengths of its key and value, a tuple of its headers), which the step
never reads: it needs a record's offset, timestamp, key and value, and the partition is
the key of getmany's answer. The parser's own record objects (aiokafka's C
DefaultRecord, or its pure-Python one) carry those four already. Measured on 300,000
events: 0.6-1.0 µs of CPU per event instead of 1.05-1.6 µs.

How: aiokafka builds each partition's PartitionRecords by its module-level name, with the
consumer's value_deserializer; this installs a subclass that hands out the parser's
records when that deserializer is RAW_RECORDS, and is ConsumerRecord-for-ConsumerRecord
aiokafka's own otherwise (every other consumer in the process). Transaction handling
(read_committed, aborted batches, control batches) is the parent's, untouched. If a
future aiokafka changes the internals this relies on, `install` leaves aiokafka as it is
and the step gets ConsumerRecords, which have the same four attributes.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Protocol

from aiokafka.consumer import fetcher as _fetcher

log = logging.getLogger(__name__)

_EXPECTED_ARGS = [
    "self",
    "tp",
    "records",
    "aborted_transactions",
    "fetch_offset",
    "key_deserializer",
    "value_deserializer",
    "check_crcs",
    "isolation_level",
]


class FetchedRecord(Protocol):
    """What the step reads of a consumed record (a ConsumerRecord has it too)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def RAW_RECORDS(value: bytes | None) -> bytes | None:
    """The value_deserializer that asks for the parser's records; as a deserializer it
    is the identity, so a path that does call it changes nothing."""
    return value


def _parsed(_tp: Any, record: Any) -> Any:
    return record


class _PartitionRecords(_fetcher.PartitionRecords):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if args[5] is RAW_RECORDS:  # value_deserializer
            self._consumer_record = _parsed


def install() -> bool:
    """Whether the consumer's records are the parser's from now on (RAW_RECORDS)."""
    if _fetcher.PartitionRecords is _PartitionRecords:
        return True
    parent = _fetcher.PartitionRecords
    fits = (
        list(inspect.signature(parent.__init__).parameters) == _EXPECTED_ARGS
        and callable(getattr(parent, "_consumer_record", None))
        and "self._consumer_record(" in inspect.getsource(parent)
    )
    if not fits:
        log.warning("aiokafka's PartitionRecords changed; the step reads ConsumerRecords")
        return False
    _fetcher.PartitionRecords = _PartitionRecords
    return True
