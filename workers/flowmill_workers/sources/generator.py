"""generator: synthetic events from a field spec, at a rate, repeatable from a seed.

Event n (0, 1, 2, ...) is fully determined by the seed and n, except `timestamp` fields,
which are the time the event is created. That is what makes a restart continue the same
sequence: the position is `{"count": n}` and the source picks up at event n.

Why not one `random.Random(seed)` for the whole stream: resuming at event n would mean
drawing n events again first (minutes after a long run). Instead events come in blocks of
BLOCK, block b drawing from `random.Random(f"flowmill:{seed}:{b}")` (string seeds hash
with SHA-512, so this is the same on every machine and Python run); resuming redraws at
most one block.
"""

from __future__ import annotations

import math
import random
import string
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from flowmill.spec.sources import GeneratedField, GeneratorSource
from flowmill_workers.events import Event
from flowmill_workers.sources.base import Chunk, Pacer, Position, Source, SourceContext

BLOCK = 1024
CHUNK = 2000
RANDOM_STRING_LENGTH = 8

Draw = Callable[[random.Random, int], Any]
"""Draws one field's value from the block's generator, given the event's number."""


def field_drawer(spec: GeneratedField) -> Draw:
    """How to draw one field, decided once so generating an event is a few calls."""
    kind = spec.type
    if kind == "int":
        assert spec.min is not None and spec.max is not None
        low, high = math.ceil(spec.min), math.floor(spec.max)
        if low > high:
            raise ValueError(f"no integer between min {spec.min} and max {spec.max}")
        return lambda rng, _: rng.randint(low, high)
    if kind == "float":
        assert spec.min is not None and spec.max is not None
        fmin, fmax = spec.min, spec.max
        return _rounded(lambda rng, _: rng.uniform(fmin, fmax), spec.precision)
    if kind == "gauss":
        mean = spec.mean if spec.mean is not None else 0.0
        stddev = spec.stddev if spec.stddev is not None else 1.0
        return _rounded(lambda rng, _: rng.gauss(mean, stddev), spec.precision)
    if kind == "choice":
        choices = list(spec.values or [])
        return lambda rng, _: rng.choice(choices)
    if kind == "uuid":
        # From the seeded generator, not uuid4(): the same seed must give the same ids.
        return lambda rng, _: str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "sequence":
        return lambda _, n: n
    if kind == "string":
        if spec.values:
            words = list(spec.values)
            return lambda rng, _: rng.choice(words)
        letters = string.ascii_lowercase
        return lambda rng, _: "".join(rng.choices(letters, k=RANDOM_STRING_LENGTH))
    if kind == "bool":
        p = spec.p if spec.p is not None else 0.5
        return lambda rng, _: rng.random() < p
    if kind == "timestamp":
        raise ValueError("timestamp fields are filled by the generator, not drawn")
    raise ValueError(f"unknown generated field type {kind!r}")


def _rounded(draw: Draw, precision: int | None) -> Draw:
    if precision is None:
        return draw
    return lambda rng, n: round(draw(rng, n), precision)


class EventGenerator:
    """Event number n of a seeded stream (pure: no I/O, no clock but `timestamp`)."""

    def __init__(self, spec: GeneratorSource) -> None:
        self.seed = spec.seed
        self.drawn = [
            (name, field_drawer(f)) for name, f in spec.fields.items() if f.type != "timestamp"
        ]
        self.stamped = [name for name, f in spec.fields.items() if f.type == "timestamp"]
        self.order = list(spec.fields)
        self._block = -1
        self._rng = random.Random()
        self._next = 0

    def events(self, start: int, count: int, now: datetime | None = None) -> list[Event]:
        """Events start .. start+count-1, created at `now`."""
        stamp = _iso(now or datetime.now(UTC))
        self._seek(start)
        out = []
        for n in range(start, start + count):
            if n % BLOCK == 0:
                self._enter(n // BLOCK)
            values = {name: draw(self._rng, n) for name, draw in self.drawn}
            for name in self.stamped:
                values[name] = stamp
            out.append({name: values[name] for name in self.order})
            self._next = n + 1
        return out

    def _enter(self, block: int) -> None:
        self._block = block
        self._rng = random.Random(f"flowmill:{self.seed}:{block}")

    def _seek(self, n: int) -> None:
        # Sequential calls continue the current block; anything else redraws its start.
        if n == self._next and (n % BLOCK == 0 or self._block == n // BLOCK):
            return
        block = n // BLOCK
        self._enter(block)
        for skipped in range(block * BLOCK, n):
            for _, draw in self.drawn:
                draw(self._rng, skipped)
        self._next = n


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, e.g. 2025-05-01T12:00:00.123Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Generator(Source):
    """Emits `rate` events per second until `count` (if set) were emitted in total."""

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        assert ctx.spec.generator is not None
        self.spec = ctx.spec.generator
        self.generator = EventGenerator(self.spec)
        self.count = 0

    def restore(self, position: Position | None) -> None:
        if position:
            self.count = int(position.get("count", 0))

    async def chunks(self) -> AsyncIterator[Chunk]:
        pacer = Pacer(self.spec.rate)
        total = self.spec.count
        while total is None or self.count < total:
            wanted = await pacer.take(CHUNK)
            if total is not None:
                wanted = min(wanted, total - self.count)
            events = self.generator.events(self.count, wanted)
            self.count += wanted
            yield Chunk(self.encoder.records(events), {"count": self.count})
