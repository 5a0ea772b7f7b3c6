"""What a test's pipeline produced: its serving tables as Redis holds them (the layout of
flowmill.serving, read directly rather than through the API, which a test does not start)
and the committed records of its topics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from flowmill import serving
from flowmill.spec.topology import DEAD_LETTER_ORIGIN_HEADERS as ORIGIN_HEADERS
from flowmill.spec.topology import DEAD_LETTER_REASON_HEADER as REASON_HEADER


@dataclass(frozen=True)
class Record:
    """One committed record of a topic."""

    partition: int
    offset: int
    key: str | None
    value: Any
    """The decoded JSON value, or the text when it is not JSON (a dead letter keeps the
    bad bytes)."""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.headers.get(REASON_HEADER, "")

    @property
    def origin(self) -> tuple[str, ...]:
        return tuple(self.headers.get(h, "") for h in ORIGIN_HEADERS)


@dataclass(frozen=True)
class Window:
    key: str
    start: int
    end: int | None
    values: dict[str, Any]


def window_table(client: redis.Redis, pipeline: str, table: str) -> list[Window]:
    """Every window of a table, by key then start; internal `_` fields left out.
    `client` decodes responses (decode_responses=True)."""
    out = []
    keys: list[str] = client.zrange(serving.keys_key(pipeline, table), 0, -1)  # type: ignore[assignment]
    for key in keys:
        starts: list[str] = client.zrange(serving.window_index_key(pipeline, table, key), 0, -1)  # type: ignore[assignment]
        for raw_start in starts:
            start = int(float(raw_start))
            fields: dict[str, str] = client.hgetall(serving.window_key(pipeline, table, key, start))  # type: ignore[assignment]
            if not fields:
                continue  # expired since it was indexed
            end = fields.pop("end", None)
            fields.pop("start", None)
            values = {k: _number(v) for k, v in fields.items() if not k.startswith("_")}
            out.append(Window(key, start, None if end is None else int(float(end)), values))
    out.sort(key=lambda w: (w.key, w.start))
    return out


def latest_table(client: redis.Redis, pipeline: str, table: str) -> dict[str, dict[str, Any]]:
    """Every key of a latest-state table and its stored event."""
    stored: dict[str, str] = client.hgetall(serving.latest_key(pipeline, table))  # type: ignore[assignment]
    return {k: orjson.loads(v) for k, v in sorted(stored.items()) if v}


def _number(text: str) -> Any:
    """A window value as the Lua sink stored it: integer or float text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_topics(
    bootstrap_servers: str, topics: list[str], timeout: float = 30.0
) -> dict[str, list[Record]]:
    """Every committed record of each topic, in partition then offset order."""
    return asyncio.run(_read_topics(bootstrap_servers, topics, timeout))


async def _read_topics(
    bootstrap_servers: str, topics: list[str], timeout: float
) -> dict[str, list[Record]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out: dict[str, list[Record]] = {t: [] for t in topics}
    if not topics:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        client_id="flowmill-test",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        tps = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            while not partitions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} has no partitions")
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # read_committed: the last stable offset, past which nothing is committed yet.
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {sorted(map(str, remaining))} took over {timeout:.0f}s"
                )
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for tp, records in batch.items():
                out[tp.topic] += [
                    Record(
                        tp.partition,
                        r.offset,
                        None if r.key is None else r.key.decode("utf-8", "replace"),
                        _value(r.value),
                        {k: v.decode("utf-8", "replace") for k, v in r.headers},
                    )
                    for r in records
                ]
            for tp in list(remaining):
                # End offsets count transaction markers, which are never returned.
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    for records in out.values():
        records.sort(key=lambda r: (r.partition, r.offset))
    return out


def _value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
