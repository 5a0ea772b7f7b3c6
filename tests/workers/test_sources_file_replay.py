"""fileReplay on real Kafka: CSV and JSON Lines at a fixed rate, the original timing scaled
by `speed`, looping, and an exact resume after kill -9."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer

from flowmill.local.kafka import EmbeddedKafka
from tests.harness.waiting import unique
from tests.workers.test_sources_support import consume, running, source_pipeline

REGIONS = ["north", "south", "east", "west", "harbour"]


def trip_rows(n: int) -> list[dict[str, Any]]:
    """Rows as the test expects them after typing (see file_replay's CSV rule)."""
    rng = random.Random(42)
    return [
        {
            "trip_id": i,
            "region_id": REGIONS[i % len(REGIONS)],
            "fare": round(rng.uniform(3, 80), 2),
            "distance_km": rng.choice([0.5, 12.25, -1.5, 1e-3]),
            "zip": f"{rng.randint(0, 9999):05d}",  # leading zeros: stays text
            "note": "" if i % 4 else f"note, with comma {i}",
            "card": "4111111111111111111" if i % 9 == 0 else "n/a",  # 19 digits: text
        }
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def as_typed(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "note": row["note"] or None}


async def test_csv_at_a_fixed_rate_keeps_order_count_and_types(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    name = unique("csv")
    topic = f"{name}-trips"
    kafka_broker.create_topics([(topic, 3)])
    rows = trip_rows(400)
    write_csv(tmp_path / "trips.csv", rows)
    rate = 1000
    p = source_pipeline(
        name,
        [(topic, 3)],
        [
            {
                "name": "replay",
                "to": topic,
                "key": "region_id",
                "fileReplay": {"path": str(tmp_path / "trips.csv"), "rate": rate},
            }
        ],
    )
    async with running(p, "replay", kafka_broker.bootstrap_servers) as src:
        await src.until(src.runner.finished.is_set)
        failed = src.metric("flowmill_events_failed_total")

    records = await consume(kafka_broker.bootstrap_servers, topic, len(rows))
    assert failed == 0
    assert sorted((r.event for r in records), key=lambda e: e["trip_id"]) == [
        as_typed(r) for r in rows
    ]
    by_region: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for r in records:
        assert r.key is not None
        by_region.setdefault(r.key, []).append(r.event["trip_id"])
        partition_of.setdefault(r.key, set()).add(r.partition)
    # Each region's events keep the file's order in their one partition.
    assert set(by_region) == {region.encode() for region in REGIONS}
    assert all(ids == sorted(ids) for ids in by_region.values())
    assert all(len(parts) == 1 for parts in partition_of.values())
    # Not faster than the rate (a lower bound only: the machine may be slow).
    stamps = [r.timestamp for r in records]
    burst = rate * 0.1
    assert (max(stamps) - min(stamps)) / 1000 >= (len(rows) - burst) / rate * 0.9


async def test_jsonl_keeps_json_types_and_skips_bad_lines(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    name = unique("jsonl")
    topic = f"{name}-events"
    kafka_broker.create_topics([(topic, 1)])
    good = [
        {"id": i, "ok": i % 2 == 0, "score": i / 4, "tags": ["a", str(i)], "meta": {"n": None}}
        for i in range(50)
    ]
    lines = [json.dumps(e) for e in good]
    lines.insert(10, "")  # blank: ignored
    lines.insert(20, "{broken")  # invalid JSON: counted as failed
    lines.insert(30, "[1, 2, 3]")  # not an object: counted as failed
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    p = source_pipeline(
        name,
        [(topic, 1)],
        [
            {
                "name": "replay",
                "to": topic,
                "fileReplay": {
                    "path": str(tmp_path / "events.jsonl"),
                    "format": "jsonl",
                    "rate": 2000,
                },
            }
        ],
    )
    async with running(p, "replay", kafka_broker.bootstrap_servers) as src:
        await src.until(src.runner.finished.is_set)
        failed = src.metric("flowmill_events_failed_total")

    records = await consume(kafka_broker.bootstrap_servers, topic, len(good))
    assert [r.event for r in records] == good
    assert all(r.key is None for r in records)
    assert failed == 2


async def test_original_timing_is_scaled_by_speed(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    name = unique("timing")
    topic = f"{name}-events"
    kafka_broker.create_topics([(topic, 1)])
    start = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    # Gaps of 0, 2, 2, 0, 4 seconds of event time; speed 4 replays them in 2 seconds.
    offsets = [0, 0, 2, 4, 4, 8]
    events = [
        {"seq": i, "at": (start + timedelta(seconds=s)).isoformat()} for i, s in enumerate(offsets)
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    p = source_pipeline(
        name,
        [(topic, 1)],
        [
            {
                "name": "replay",
                "to": topic,
                "fileReplay": {
                    "path": str(tmp_path / "events.jsonl"),
                    "format": "jsonl",
                    "timeField": "at",
                    "speed": 4,
                },
            }
        ],
    )
    async with running(p, "replay", kafka_broker.bootstrap_servers, linger_ms=0) as src:
        await src.until(src.runner.finished.is_set)

    records = await consume(kafka_broker.bootstrap_servers, topic, len(events))
    assert [r.event for r in records] == events
    # Kafka's record timestamps say when each event was sent. Only lower bounds with
    # slack, and a generous upper bound: timing asserts must not flake on a slow machine.
    sent = [r.timestamp / 1000 for r in records]
    elapsed = sent[-1] - sent[0]
    assert 1.8 <= elapsed <= 6.0
    for i in range(1, len(events)):
        expected_gap = (offsets[i] - offsets[i - 1]) / 4
        assert sent[i] - sent[i - 1] >= expected_gap - 0.1


async def test_loop_starts_again_from_the_top(kafka_broker: EmbeddedKafka, tmp_path: Path) -> None:
    name = unique("loop")
    topic = f"{name}-events"
    kafka_broker.create_topics([(topic, 1)])
    (tmp_path / "three.csv").write_text("letter,n\na,1\nb,2\nc,3\n")
    p = source_pipeline(
        name,
        [(topic, 1)],
        [
            {
                "name": "replay",
                "to": topic,
                "fileReplay": {"path": str(tmp_path / "three.csv"), "rate": 500, "loop": True},
            }
        ],
    )
    async with running(p, "replay", kafka_broker.bootstrap_servers) as src:
        await src.until(lambda: src.written() >= 10)
    records = await consume(kafka_broker.bootstrap_servers, topic, 10, settle=0.3)
    letters = [r.event["letter"] for r in records]
    assert len(letters) >= 10
    assert letters == (["a", "b", "c"] * len(letters))[: len(letters)]
    assert records[0].event == {"letter": "a", "n": 1}
    # The last record carries where the source stands: after it, in the pass it is in.
    n = len(records)
    last = json.loads(records[-1].headers["flowmill-position"])
    assert last == {"seq": n, "pos": {"pass": (n - 1) // 3, "line": (n - 1) % 3 + 1}}


# -- exact resume after kill -9 ------------------------------------------------------


class TopicTail:
    """Reads a topic (read_committed) in the background while sources come and go."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        self.values: list[tuple[int, int]] = []  # (partition, line id)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicTail:
        await self.consumer.start()
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            for tp, records in batch.items():
                self.values += [(tp.partition, json.loads(r.value)["line"]) for r in records]

    async def until(self, count: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
        """Whether `count` records arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.values) < count:
            if process.poll() is not None:
                raise AssertionError(f"the source process exited with {process.returncode}")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


def start_worker(manifest: Path, bootstrap: str, log: Path) -> subprocess.Popen[bytes]:
    """`flowmill worker --source replay`, exactly what a source Deployment runs."""
    command = [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(manifest)]
    command += ["--source", "replay", "--bootstrap-servers", bootstrap, "--metrics-port", "0"]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy()
        )


async def test_kill_9_and_restart_emit_every_line_exactly_once(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    lines = 12_000
    name = unique("resume")
    topic = f"{name}-lines"
    partitions = 3
    kafka_broker.create_topics([(topic, partitions)])
    data = tmp_path / "lines.csv"
    data.write_text("line,k,payload\n" + "".join(f"{i},{i % 7},p{i}\n" for i in range(lines)))
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "flowmill.dev/v1alpha1",
                "kind": "Pipeline",
                "metadata": {"name": name},
                "spec": {
                    "topics": [{"name": topic, "partitions": partitions}],
                    "sources": [
                        {
                            "name": "replay",
                            "to": topic,
                            "key": "k",
                            "fileReplay": {"path": str(data), "rate": 4000},
                        }
                    ],
                },
            }
        )
    )
    log = tmp_path / "worker.log"
    rng = random.Random()
    kill_points = sorted(rng.sample(range(1_500, lines - 2_000), 2))
    async with TopicTail(kafka_broker.bootstrap_servers, topic) as tail:
        for point in kill_points:
            worker = start_worker(manifest, kafka_broker.bootstrap_servers, log)
            try:
                assert await tail.until(point, worker, timeout=30), log.read_text()[-2000:]
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
        worker = start_worker(manifest, kafka_broker.bootstrap_servers, log)
        try:
            # A shortfall is reported below, as the lines that are missing.
            if await tail.until(lines, worker, timeout=30):
                await asyncio.sleep(1.0)  # room for a duplicate to show up
        finally:
            worker.send_signal(signal.SIGTERM)
            exit_code = worker.wait(timeout=30)

    seen = Counter(line for _, line in tail.values)
    duplicates = {line: n for line, n in seen.items() if n > 1}
    missing = set(range(lines)) - set(seen)
    context = f"killed at {kill_points}; log: {log}"
    assert not duplicates, (
        f"{len(duplicates)} lines written twice, e.g. {list(duplicates)[:5]}; {context}"
    )
    assert not missing, f"{len(missing)} lines never written, e.g. {sorted(missing)[:5]}; {context}"
    assert len(tail.values) == lines
    # Per partition, the file's order survived the restarts.
    for partition in range(partitions):
        ids = [line for part, line in tail.values if part == partition]
        assert ids == sorted(ids)
    assert exit_code == 0, log.read_text()[-2000:]
