"""The Parquet lake on a real S3 server (SeaweedFS, tests/harness/s3_server.py): files
land date-partitioned under s3://bucket/prefix, DuckDB reads them back over S3, and a
worker killed with SIGKILL mid-stream, then restarted, leaves every event in the lake
exactly once, including after a crashed predecessor's file that was never committed.

DuckDB reads s3:// paths through pyarrow's S3 client, registered as an fsspec filesystem:
its own httpfs extension is downloaded at run time, which this machine cannot do."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow import fs as pafs

from flowmill.local.kafka import EmbeddedKafka
from flowmill.spec import Pipeline, consumer_group
from flowmill_workers.sinks.parquet_lake import file_name, parse_file_name
from tests.harness.s3_server import REGION, SeaweedS3
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, end_offsets, pipeline, produce, run_step

PARTITIONS = 3
DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")


def lake_pipeline(name: str, s3: SeaweedS3, prefix: str, max_rows: int) -> Pipeline:
    sink = {
        "s3": {"bucket": s3.bucket, "prefix": prefix, "endpoint": s3.endpoint, "region": REGION},
        "timeField": "ts",
        "partitionBy": "date",
        "flushInterval": "1s",
        "maxRows": max_rows,
    }
    steps = [{"name": "land", "from": name, "sink": {"parquet": sink}}]
    return pipeline(name, [{"name": name, "partitions": PARTITIONS}], steps)


def rides(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "ride": i,
            "station": f"s{rng.randrange(9)}",
            "bikes": rng.randrange(40),
            "ts": f"{rng.choice(DAYS)}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        }
        for i in range(count)
    ]


def per_day(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(date, rides, bikes) computed from the events themselves."""
    counts: Counter[str] = Counter()
    bikes: Counter[str] = Counter()
    for e in events:
        counts[e["ts"][:10]] += 1
        bikes[e["ts"][:10]] += e["bikes"]
    return [(day, counts[day], bikes[day]) for day in sorted(counts)]


def duckdb_over_s3(s3: SeaweedS3) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads s3:// URLs from the test server."""
    con = duckdb.connect()
    con.register_filesystem(ArrowFSWrapper(s3.filesystem()))  # protocol "s3"
    return con


def lake_url(s3: SeaweedS3, prefix: str) -> str:
    return f"s3://{s3.bucket}/{prefix}/*/*.parquet"


def lake_files(s3: SeaweedS3, prefix: str) -> list[str]:
    selector = pafs.FileSelector(f"{s3.bucket}/{prefix}", recursive=True, allow_not_found=True)
    return sorted(
        i.path for i in s3.filesystem().get_file_info(selector) if i.type == pafs.FileType.File
    )


@pytest.fixture
def worker_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment the operator gives a lake worker from its credentialsSecret, and no
    instance-metadata lookups (they would leave loopback)."""
    env = s3_server.env() | {"AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env


async def test_lake_on_s3_is_date_partitioned_and_read_by_duckdb(
    kafka_broker: EmbeddedKafka, s3_server: SeaweedS3, worker_env: dict[str, str]
) -> None:
    name = unique("s3lake")
    prefix = f"{name}/rides"
    p = lake_pipeline(name, s3_server, prefix, max_rows=10_000)
    create_topics(kafka_broker, p)
    events = rides(900, seed=3)
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="station")
    await run_step(p, "land", kafka_broker.bootstrap_servers, None, len(events))

    files = lake_files(s3_server, prefix)
    folders = {f.rsplit("/", 2)[-2] for f in files}
    assert folders == {f"date={day}" for day in DAYS}
    for f in files:
        parsed = parse_file_name(f.rsplit("/", 1)[-1])
        assert parsed is not None and parsed[0] == name, f
    # S3 has no directories: no empty `folder/` marker objects beside the files.
    listing = s3_server.filesystem().get_file_info(
        pafs.FileSelector(f"{s3_server.bucket}/{prefix}", recursive=True)
    )
    assert {i.path for i in listing if i.type == pafs.FileType.File} == set(files)

    con = duckdb_over_s3(s3_server)
    got = con.sql(
        f"SELECT date::VARCHAR, count(*), sum(bikes) FROM read_parquet('{lake_url(s3_server, prefix)}', "
        "hive_partitioning = true) GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert got == per_day(events)
    rows = con.sql(
        f"SELECT ride, station, bikes, ts FROM read_parquet('{lake_url(s3_server, prefix)}')"
    ).fetchall()
    assert sorted(rows) == [(e["ride"], e["station"], e["bikes"], e["ts"]) for e in events]


def start_worker(
    manifest: Path, kafka: EmbeddedKafka, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(manifest)]
    argv += ["--step", "land", "--bootstrap-servers", kafka.bootstrap_servers]
    argv += ["--metrics-port", "0", "--batch-size", "300"]
    return subprocess.Popen(
        argv, env=os.environ | env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {
            p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(PARTITIONS)
        }
    finally:
        await consumer.stop()


def plant_uncommitted_file(s3: SeaweedS3, prefix: str, topic: str, partition: int, at: int) -> str:
    """What a worker killed between writing a file and committing its offsets leaves: a
    file starting at the committed offset. Its rows are marked so a survivor shows."""
    path = f"{s3.bucket}/{prefix}/date={DAYS[0]}/{file_name(topic, partition, at, at + 5)}"
    rows = [
        {"ride": -1, "station": "planted", "bikes": 0, "ts": f"{DAYS[0]}T00:00:00Z"}
        | {"_kafka_partition": partition, "_kafka_offset": at + i}
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path, filesystem=s3.filesystem())
    return path


async def test_kill_9_mid_stream_leaves_every_event_once_on_s3(
    kafka_broker: EmbeddedKafka,
    s3_server: SeaweedS3,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    name = unique("s3kill")
    prefix = f"{name}/rides"
    p = lake_pipeline(name, s3_server, prefix, max_rows=100)
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump(p.to_manifest()))
    create_topics(kafka_broker, p)
    events = rides(3_000, seed=7)
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="station")

    seed = int(os.environ.get("FLOWMILL_FAULT_SEED", random.randrange(1 << 30)))
    print(f"kill points seeded with FLOWMILL_FAULT_SEED={seed}")
    rng = random.Random(seed)
    log = tmp_path / "worker.log"
    group = consumer_group(name, "land")
    worker = start_worker(manifest, kafka_broker, worker_env, log)
    # Killed once it has committed some files, at a random moment after: mid-stream, so
    # the restart resumes part-way, after files that must stay and one that must go.
    deadline = time.monotonic() + 60
    while not sum((await committed_offsets(kafka_broker.bootstrap_servers, group, name)).values()):
        assert worker.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker committed no lake file"
        await asyncio.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    committed = await committed_offsets(kafka_broker.bootstrap_servers, group, name)
    assert sum(committed.values()) < len(events), f"finished before the kill: {committed}"
    partition = min(committed, key=committed.__getitem__)
    planted = plant_uncommitted_file(s3_server, prefix, name, partition, committed[partition])
    started = time.monotonic()

    worker = start_worker(manifest, kafka_broker, worker_env, log)
    ends = await end_offsets(kafka_broker.bootstrap_servers, name, PARTITIONS)
    try:
        # Every offset committed means every file written (offsets follow their files).
        while await committed_offsets(kafka_broker.bootstrap_servers, group, name) != ends:
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - started < 90, "the restarted worker did not catch up"
            await asyncio.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]

    con = duckdb_over_s3(s3_server)
    url = lake_url(s3_server, prefix)
    assert planted not in set(lake_files(s3_server, prefix))
    # The restarted worker removed it (and any file the kills left uncommitted).
    removed = rf"removed \d+ uncommitted lake file\(s\) of .*{name}.*partition={partition}\b"
    assert re.search(removed, log.read_text()), log.read_text()[-3000:]
    rows = con.sql(f"SELECT ride, station, bikes, ts FROM '{url}'").fetchall()
    assert len(rows) == len(events), "an event is in the lake twice"
    assert sorted(rows) == [(e["ride"], e["station"], e["bikes"], e["ts"]) for e in events]
    got = con.sql(
        f"SELECT date::VARCHAR, count(*), sum(bikes) FROM read_parquet('{url}', "
        "hive_partitioning = true) GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert got == per_day(events)
    # The credentials reached the worker only through its environment, never its log.
    assert s3_server.secret_key not in log.read_text()
