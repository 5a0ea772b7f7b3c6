"""Window records to a step's kafka topic (`sink.kafka.emit: final|updates`), exactly once.

The records are decided where the windows are: the step's fenced table scripts
(sinks.redis_tables, sinks.redis_sessions) append each one to a Redis stream, the step's
outbox (flowmill.serving.outbox_key), in the same atomic step that applies the batch and
moves the checkpoint. So the outbox holds every record exactly once whatever instant a
worker dies at: a replayed batch is refused by the fence, and a window leaves the `open`
set in the script that announces it final.

The emitter moves the outbox to Kafka in transactions, oldest entry first. Every record
carries the `flowmill-source` header (this step's emitter) and `flowmill-position`
(`seq`: records emitted so far, `pos.id`: its outbox entry). A new emitter fences its
predecessor (one transactional id per step, flowmill.spec.topology), then reads the last
committed records of the topic and continues after the highest position, as a source
resumes (sources.resume): no entry is written twice and none is skipped. Entries Kafka
holds are trimmed from the outbox after each commit.

One emitter runs per step: in the worker that owns partition 0 of the step's input.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from flowmill import serving
from flowmill.kafka_security import KafkaClientSecurity
from flowmill.spec import StepSpec
from flowmill.spec.topology import emitter_transactional_id
from flowmill_workers.sources.resume import (
    POSITION_HEADER,
    SOURCE_HEADER,
    last_position,
    output_partitions,
    position_header,
    source_id,
)

log = logging.getLogger("flowmill.worker")

BATCH = 2000
"""Most outbox entries per Kafka transaction."""
BLOCK_MS = 200
"""How long one read waits for new entries (below the Redis client's reply timeout)."""
INTEGER_OPS = ("count", "distinct")


class WindowEmitter:
    """Moves one step's outbox to its kafka topic until cancelled."""

    def __init__(
        self,
        pipeline: str,
        step: StepSpec,
        redis: aioredis.Redis,
        bootstrap_servers: str,
        security: KafkaClientSecurity,
    ) -> None:
        assert step.sink is not None and step.sink.kafka is not None
        assert step.key_by is not None and step.aggregate is not None
        assert step.window is not None
        self.step = step.name
        self.topic = step.sink.kafka.topic
        self.outbox = serving.outbox_key(pipeline, step.name)
        # Sources and steps share one namespace, so this never names a source too.
        self.sid = source_id(pipeline, step.name)
        self.transactional_id = emitter_transactional_id(pipeline, step.name)
        self.redis = redis
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.key_path = step.key_by.split(".")
        self.ops = [(name, a.op) for name, a in step.aggregate.items()]
        self.session = step.window.type == "session"
        self.stamp = step.sink.kafka.timestamp
        self.emitted = 0
        """Records this emitter committed (for tests and logs)."""

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"flowmill-{self.step}-emit",
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            **self.security.kwargs(),
        )
        await producer.start()  # fences the previous emitter, aborting its transaction
        try:
            partitions = await output_partitions(producer, self.topic)
            resumed = await last_position(
                self.bootstrap_servers, self.security, self.topic, partitions, self.sid
            )
            seq = resumed.seq
            last = str(resumed.position["id"]) if resumed.position else "0-0"
            log.info("step %s emits window records to %s after outbox entry %s (%d so far)",
                     self.step, self.topic, last, seq)  # fmt: skip
            await self._trim(last)
            while True:
                reply: Any = await self.redis.xread(
                    {self.outbox: last}, count=BATCH, block=BLOCK_MS
                )
                # [[stream, [(entry id, {field: value})]]], bytes throughout (no decoding)
                entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
                if not entries:
                    continue
                async with producer.transaction():
                    futures = []
                    for entry_id, fields in entries:
                        seq += 1
                        key, value, start, end = self.record(fields)
                        headers = [
                            (SOURCE_HEADER, self.sid),
                            (POSITION_HEADER, position_header(seq, {"id": entry_id.decode()})),
                        ]
                        futures.append(
                            await producer.send(
                                self.topic,
                                value,
                                key=key,
                                timestamp_ms=self.timestamp(start, end),
                                headers=headers,
                            )
                        )
                    await asyncio.gather(*futures)
                last = entries[-1][0].decode()
                self.emitted += len(entries)
                await self._trim(last)
        finally:
            await producer.stop()

    async def _trim(self, last: str) -> None:
        """Drop the entries before `last` (Kafka has them); `last` itself stays, which
        costs one entry and keeps the stream's position readable."""
        if last != "0-0":
            await self.redis.xtrim(self.outbox, minid=last)

    def timestamp(self, start: int, end: int) -> int | None:
        """A record's Kafka timestamp (sink.kafka.timestamp); None: the producer's now."""
        if self.stamp == "start":
            return start
        if self.stamp == "end":
            return end - 1
        return None

    def record(self, fields: dict[bytes, bytes]) -> tuple[bytes, bytes, int, int]:
        """(key, JSON value, start ms, end ms) of one outbox entry (flowmill.serving's
        fields)."""
        key = fields[b"k"].decode()
        start = int(fields[b"s"])
        end = int(fields[b"e"])
        value: dict[str, Any] = {}
        node = value
        for part in self.key_path[:-1]:
            node = node.setdefault(part, {})
        node[self.key_path[-1]] = key
        value["start"] = start
        value["end"] = end
        if self.session and b"l" in fields:
            value["last_event"] = int(fields[b"l"])
        for name, op in self.ops:
            raw = fields.get(b"v:" + name.encode())
            if raw is None:
                value[name] = None  # not stored: overflowed (docs/reliability.md)
            elif op in INTEGER_OPS:
                value[name] = int(raw)
            else:
                value[name] = float(raw)
        value["final"] = fields[b"f"] == b"1"
        wm = fields.get(b"w", b"")
        value["watermark"] = int(wm) if wm else None
        return key.encode(), orjson.dumps(value), start, end
