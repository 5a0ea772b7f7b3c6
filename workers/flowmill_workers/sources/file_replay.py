"""fileReplay: replay a CSV or JSON Lines file at a fixed rate, at its original pace, or as
fast as Kafka takes it; resumable after a crash.

Pacing: `rate` set means that many events per second (a token bucket, released in ticks
of a few milliseconds, so 50k/s works); otherwise `timeField` replays the original gaps
divided by `speed` (the first event, and the first after a restart or a new loop pass,
goes at once; an event without a usable time, or earlier than its predecessor, goes at
once too); with neither, as fast as Kafka acknowledges.

Position: `{"pass": p, "line": n}`, where `n` counts the file's *records* already consumed
in pass `p` (CSV: data rows after the header, however many physical lines a quoted field
spans; JSONL: lines, blank ones included). A restart re-reads the file and skips `n`
records, so the file must not change under a running source; replacing it with a longer
version of itself (appending) is fine.

CSV values are typed by one rule, so that aggregates work on numbers:
- the empty cell is a missing value (None);
- `-?(0|[1-9][0-9]*)` with at most 18 digits (fits a signed 64-bit integer) becomes an int;
- a decimal with a point and/or exponent (`1.5`, `-0.25`, `.5`, `1e3`, `2.5E-4`) that is
  finite becomes a float;
- everything else stays text, including leading zeros (`007`, ZIP codes), a leading `+`,
  surrounding spaces, `1_000`, `nan`/`inf`, `true`/`false` and longer digit strings (card
  numbers and other identifiers), so no identifier is ever mangled.
JSON Lines values keep their JSON types.

A bad record (a CSV row with more or fewer fields than the header, a JSONL line that is
not a JSON object) is logged, counted in flowmill_events_failed and skipped; it still
counts in the position, so once a later event is written a restart skips it silently.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from flowmill.spec.sources import FileReplaySource
from flowmill_workers.events import BadEvent, Event, event_time_ms, get_field
from flowmill_workers.sources.base import Chunk, Pacer, Position, Source, SourceContext

log = logging.getLogger("flowmill.source.file")

CHUNK = 2000
"""Most records per chunk: big enough to amortise a send, small enough to keep the event
loop responsive (metrics, probes) while reading."""

# One pattern for both kinds, so a numeric-looking cell costs one match: group 1 is the
# integer form; the other branches need a point or an exponent, so a long digit string
# never sneaks in as a float.
_NUMBER = re.compile(
    r"(-?(?:0|[1-9][0-9]{0,17}))"
    r"|-?(?:(?:0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|-?(?:0|[1-9][0-9]*)[eE][+-]?[0-9]+"
)
_NUMBER_START = frozenset("-.0123456789")


def csv_value(text: str) -> Any:
    """A CSV cell typed by the rule in this module's docstring."""
    if not text:
        return None
    if text[0] not in _NUMBER_START:
        return text  # the common case for text columns: no regex at all
    match = _NUMBER.fullmatch(text)
    if match is None:
        return text
    if match.lastindex:
        return int(text)
    value = float(text)
    return value if math.isfinite(value) else text


# One record of the file: the number of records consumed once it is, and the event (None
# for a blank or bad record, which still advances the position).
Row = tuple[int, Event | None]


class FileReplay(Source):
    """Reads the file in chunks and paces them as the spec says."""

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        assert ctx.spec.file_replay is not None
        self.spec: FileReplaySource = ctx.spec.file_replay
        self.pass_no = 0
        self.start_line = 0

    def restore(self, position: Position | None) -> None:
        if position:
            self.pass_no = int(position.get("pass", 0))
            self.start_line = int(position.get("line", 0))

    async def chunks(self) -> AsyncIterator[Chunk]:
        while True:
            emitted = False
            async for chunk in self._one_pass():
                emitted = True
                yield chunk
            if not self.spec.loop:
                return
            if not emitted and self.start_line == 0:
                log.warning("%s holds no events; nothing to loop over", self.spec.path)
                return
            self.pass_no, self.start_line = self.pass_no + 1, 0

    def _one_pass(self) -> AsyncIterator[Chunk]:
        rows = self._rows(self.start_line)
        if self.spec.rate is not None:
            return self._at_rate(rows, self.spec.rate)
        if self.spec.time_field is not None:
            return self._original_timing(rows, self.spec.time_field)
        return self._flat_out(rows)

    # -- pacing ---------------------------------------------------------------------

    async def _flat_out(self, rows: Iterator[Row]) -> AsyncIterator[Chunk]:
        while True:
            chunk = self._take(rows, CHUNK)
            if chunk is None:
                return
            yield chunk
            await asyncio.sleep(0)  # let the sender and the HTTP side run between chunks

    async def _at_rate(self, rows: Iterator[Row], rate: float) -> AsyncIterator[Chunk]:
        pacer = Pacer(rate)
        while True:
            chunk = self._take(rows, await pacer.take(CHUNK))
            if chunk is None:
                return
            yield chunk

    async def _original_timing(self, rows: Iterator[Row], field: str) -> AsyncIterator[Chunk]:
        # The first timed event pins event time to wall time; each later event is due
        # (its time - first time) / speed after that. An event without a usable time, or
        # one earlier than a predecessor, is due at once.
        speed = self.spec.speed
        origin: tuple[int, float] | None = None
        ahead: Row | None = None
        exhausted = False
        while not exhausted or ahead is not None:
            events: list[Event] = []
            line = -1
            next_due: float | None = None
            while len(events) < CHUNK:
                if ahead is None:
                    ahead = next(rows, None)
                    if ahead is None:
                        exhausted = True
                        break
                row_line, event = ahead
                if event is not None:
                    at = _event_ms(event, field)
                    if at is not None:
                        if origin is None:
                            origin = (at, time.monotonic())
                        due = origin[1] + (at - origin[0]) / 1000 / speed
                        if due - time.monotonic() > 0.001:
                            next_due = due
                            break
                    events.append(event)
                line, ahead = row_line, None
            if events:
                yield Chunk(self.encoder.records(events), self._position(line))
            if next_due is not None:
                await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    # -- reading --------------------------------------------------------------------

    def _take(self, rows: Iterator[Row], most: int) -> Chunk | None:
        """Up to `most` events; None once the file is exhausted."""
        events: list[Event] = []
        consumed = -1
        for line, event in rows:
            consumed = line
            if event is not None:
                events.append(event)
                if len(events) >= most:
                    break
        if consumed < 0:
            return None
        return Chunk(self.encoder.records(events), self._position(consumed))

    def _position(self, line: int) -> Position:
        return {"pass": self.pass_no, "line": line}

    def _rows(self, skip: int) -> Iterator[Row]:
        reader = self._csv_rows if self.spec.format == "csv" else self._jsonl_rows
        return reader(skip)

    def _csv_rows(self, skip: int) -> Iterator[Row]:
        with open(self.spec.path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            width = len(header)
            for number, cells in enumerate(reader, start=1):
                if number <= skip:
                    continue
                if not cells:
                    yield number, None
                elif len(cells) != width:
                    # A short or long row usually means a broken quote: never guess.
                    self.failed()
                    log.warning(
                        "%s record %d: %d fields, header has %d; skipped",
                        self.spec.path,
                        number,
                        len(cells),
                        width,
                    )
                    yield number, None
                else:
                    yield (
                        number,
                        {name: csv_value(cell) for name, cell in zip(header, cells, strict=True)},
                    )

    def _jsonl_rows(self, skip: int) -> Iterator[Row]:
        with open(self.spec.path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number <= skip:
                    continue
                if not line.strip():
                    yield number, None
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError as err:
                    event = err
                if isinstance(event, dict):
                    yield number, event
                else:
                    self.failed()
                    log.warning("%s line %d is not a JSON object; skipped", self.spec.path, number)
                    yield number, None


def _event_ms(event: Event, field: str) -> int | None:
    try:
        return event_time_ms(get_field(event, field), field)
    except BadEvent:
        return None
