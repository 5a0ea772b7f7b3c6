"""What every source shares: the chunk it yields, the interface the runner drives, the
encoding of events into Kafka records, and rate pacing.

A source yields *chunks*: the records it has ready now plus its *position* after them
(the small JSON state it needs to continue exactly there). The runner writes chunks in
Kafka transactions and stores the position with the records (a header on the last
record of each partition), so the output topic itself remembers how far a source got
(see sources.resume).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill_workers.events import MAX_EVENT_BYTES, BadEvent, Event, encode, key_of

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from flowmill.spec import SourceSpec
    from flowmill_workers.runtime.metrics import WorkerMetrics

log = logging.getLogger("flowmill.source")

Position = dict[str, Any]
"""A source's JSON-serialisable state after a chunk, e.g. {"pass": 0, "line": 1200}."""

OutRecord = tuple[bytes | None, bytes | None, int | None]
"""(key, value, timestamp_ms) of one Kafka record; a None timestamp means "now"."""


@dataclass(slots=True)
class Chunk:
    """Records that are ready to send, and where the source stands once they are durable."""

    records: list[OutRecord]
    position: Position | None = None


@dataclass(frozen=True)
class SourceContext:
    """What a source needs to know besides its own spec."""

    pipeline: str
    spec: SourceSpec
    metrics: WorkerMetrics
    bootstrap_servers: str
    security: KafkaClientSecurity = PLAINTEXT
    """Of the Pipeline's Kafka (bootstrap_servers), not of any other cluster."""


class Source(ABC):
    """One kind of source. The runner calls start() and restore() once, then iterates
    chunks(), then close().

    `position_in_output` says whether the output topic is where the position is kept (file
    replay, generator, HTTP poll). The Kafka mirror keeps its position as consumer-group
    offsets instead and uses the commit hooks.
    """

    position_in_output: bool = True

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = ctx.spec.name
        self.encoder = EventEncoder(ctx.spec.key, self.failed)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to whatever the source reads (called before restore)."""

    def restore(self, position: Position | None) -> None:  # noqa: B027 - optional hook
        """Continue after `position`, the one stored with the last committed chunk
        (None: nothing was ever committed, start from the beginning)."""

    @abstractmethod
    def chunks(self) -> AsyncIterator[Chunk]:
        """Chunks in order; the iterator ends when the source has nothing more, ever."""

    async def before_commit(  # noqa: B027 - optional hook
        self, producer: AIOKafkaProducer, position: Position | None
    ) -> None:
        """Called inside the transaction, after the records were sent."""

    async def after_commit(self, position: Position | None) -> None:  # noqa: B027
        """Called once the transaction holding the chunks up to `position` is committed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def failed(self, count: int = 1) -> None:
        """Count input that could not become an event (bad line, failed poll)."""
        self.ctx.metrics.events_failed.labels(self.ctx.pipeline, self.name).inc(count)


class EventEncoder:
    """Turns events into Kafka records: JSON value, key from the source's `key` field."""

    def __init__(self, key_field: str | None, on_dropped: Callable[[int], None]) -> None:
        self.key_field = key_field
        self.on_dropped = on_dropped
        self._warned = False

    def records(self, events: Iterable[Event]) -> list[OutRecord]:
        pairs = [(event, encode(event)) for event in events]
        if any(len(value) > MAX_EVENT_BYTES for _, value in pairs):
            # The broker would refuse the record and fail the whole transaction on every
            # restart; one absurd line must not stop a replay for good.
            kept = [(e, v) for e, v in pairs if len(v) <= MAX_EVENT_BYTES]
            self.on_dropped(len(pairs) - len(kept))
            log.warning(
                "dropped %d event(s) over %d bytes", len(pairs) - len(kept), MAX_EVENT_BYTES
            )
            pairs = kept
        return [(self.key(event), value, None) for event, value in pairs]

    def key(self, event: Event) -> bytes | None:
        if self.key_field is None:
            return None
        try:
            return key_of(event, self.key_field).encode()
        except BadEvent as err:
            # A source does not drop data over a missing key: the event is sent unkeyed
            # (any partition) and a downstream keyBy or validate step can judge it.
            if not self._warned:
                log.warning("%s; sending such events without a key", err.reason)
                self._warned = True
            return None


class Pacer:
    """A token bucket letting `rate` events per second through.

    Events are released in ticks of at least MIN_TICK seconds, so a high rate (50k/s)
    becomes a few hundred events per tick rather than one wake-up per event. A stall (a
    slow commit) may be caught up by at most `burst_seconds` worth of events, so the rate
    never spikes far above the target.
    """

    MIN_TICK = 0.005

    def __init__(self, rate: float, burst_seconds: float = 0.1) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * burst_seconds)
        self.tokens = 0.0
        self.last = time.monotonic()

    async def take(self, most: int) -> int:
        """Wait until at least one event may go; return how many (1..most) may go now."""
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                granted = min(most, int(self.tokens))
                self.tokens -= granted
                return granted
            await asyncio.sleep(max(self.MIN_TICK, (1.0 - self.tokens) / self.rate))
