"""The Parquet lake sink: events as files partitioned by date (and hour), on a local path
or an S3-compatible bucket, readable by DuckDB, Athena, Spark or pandas.

A file holds one input partition's events from offset `first` up to `next` and is named
after that range: `date=2026-11-22/hour=05/{topic}-{partition}-{first}-{next}.parquet`.
Offsets are committed only after the file is written; when a worker takes over a
partition it deletes files starting at or after the committed offset (left by a worker
that crashed before committing), so the replay rewrites them and nothing is doubled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from flowmill.spec import StepSpec, duration_seconds
from flowmill.spec.sinks import S3Target
from flowmill_workers.events import Event, event_time_ms, get_field


@dataclass
class _Buffer:
    first: int
    next: int
    started: float
    rows: list[tuple[int, int, Event]] = field(default_factory=list)


class ParquetLake:
    """Buffers one step's events per input partition and writes them as Parquet."""

    def __init__(self, pipeline: str, step: StepSpec) -> None:
        spec = step.sink.parquet if step.sink else None
        if spec is None:
            raise ValueError(f"step {step.name} has no parquet sink")
        self.spec = spec
        self.hourly = spec.partition_by == "hour"
        self.flush_seconds = duration_seconds(spec.flush_interval)
        if spec.s3 is not None:
            self.fs: pafs.FileSystem = s3_filesystem(spec.s3)
            self.root = f"{spec.s3.bucket}/{spec.s3.prefix.strip('/')}".rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(spec.path).rstrip("/")
        # S3 has no directories: creating one would only add an empty `folder/` object.
        self.make_dirs = spec.s3 is None
        self.buffers: dict[tuple[str, int], _Buffer] = {}

    def _time(self, row_ts: int, event: Event) -> int:
        if self.spec.time_field:
            return event_time_ms(get_field(event, self.spec.time_field), self.spec.time_field)
        return row_ts

    def add(
        self, topic: str, partition: int, first: int, nxt: int, rows: list[tuple[int, int, Event]]
    ) -> None:
        """Buffer a batch's rows (record timestamp, offset, event) of one partition."""
        buf = self.buffers.get((topic, partition))
        if buf is None:
            buf = self.buffers[(topic, partition)] = _Buffer(first, nxt, time.monotonic())
        buf.next = nxt
        buf.rows.extend(rows)

    def due(self) -> list[tuple[str, int]]:
        """Partitions whose buffer is big or old enough to write."""
        now = time.monotonic()
        return [
            tp
            for tp, b in self.buffers.items()
            if len(b.rows) >= self.spec.max_rows or now - b.started >= self.flush_seconds
        ]

    async def flush(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Write the given buffers; returns the offsets now safe to commit."""
        done: dict[tuple[str, int], int] = {}
        for tp in partitions:
            buf = self.buffers.pop(tp, None)
            if buf is None:
                continue
            await asyncio.to_thread(self._write, tp[0], tp[1], buf)
            done[tp] = buf.next
        return done

    def _write(self, topic: str, partition: int, buf: _Buffer) -> None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for ts, offset, event in buf.rows:
            moment = datetime.fromtimestamp(self._time(ts, event) / 1000, tz=UTC)
            folder = f"date={moment:%Y-%m-%d}" + (f"/hour={moment:%H}" if self.hourly else "")
            row = {**event, "_kafka_partition": partition, "_kafka_offset": offset}
            groups.setdefault(folder, []).append(row)
        for folder, rows in groups.items():
            directory = f"{self.root}/{folder}"
            if self.make_dirs:
                self.fs.create_dir(directory, recursive=True)
            path = f"{directory}/{file_name(topic, partition, buf.first, buf.next)}"
            # On S3 the object appears whole or not at all (one PUT, or a multipart
            # upload completed at close), so a reader never sees half a file.
            pq.write_table(_table(rows), path, filesystem=self.fs)

    def drop(self, topic: str, partition: int) -> None:
        """Forget a partition's buffered rows without writing them."""
        self.buffers.pop((topic, partition), None)

    def discard_uncommitted(self, topic: str, partition: int, committed: int) -> int:
        """Delete files of this partition that start at or after the committed offset."""
        removed = 0
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        except FileNotFoundError:
            return 0
        for info in infos:
            parsed = parse_file_name(info.base_name) if info.type == pafs.FileType.File else None
            if parsed is None or parsed[:2] != (topic, partition):
                continue
            if parsed[2] >= committed:
                self.fs.delete_file(info.path)
                removed += 1
        self.drop(topic, partition)
        return removed


def s3_filesystem(target: S3Target) -> pafs.S3FileSystem:
    """pyarrow's S3 client for a target. Credentials come from the environment (the
    operator mounts the target's credentialsSecret as AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY), else the SDK's chain (a web identity, an instance role)."""
    endpoint, scheme = None, "https"
    if target.endpoint:  # http(s)://host[:port], or host[:port] for https (S3Target checks)
        parts = urlsplit(target.endpoint if "://" in target.endpoint else f"//{target.endpoint}")
        endpoint, scheme = parts.netloc, parts.scheme or "https"
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme=scheme, region=target.region)


def file_name(topic: str, partition: int, first: int, nxt: int) -> str:
    """A lake file's name: the input partition and the offsets [first, next) it holds."""
    return f"{topic}-{partition}-{first}-{nxt}.parquet"


def parse_file_name(name: str) -> tuple[str, int, int, int] | None:
    """(topic, partition, first, next) of a lake file's name; None for any other file.
    Read from the right, since a topic name may itself hold dashes and digits."""
    if not name.endswith(".parquet"):
        return None
    parts = name.removesuffix(".parquet").rsplit("-", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return None
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """A table from event dicts; columns whose values disagree on type become JSON text."""
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        columns = sorted({k for r in rows for k in r})
        fixed = [
            {
                k: _as_text(r.get(k)) if k not in ("_kafka_partition", "_kafka_offset") else r[k]
                for k in columns
            }
            for r in rows
        ]
        return pa.Table.from_pylist(fixed)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
