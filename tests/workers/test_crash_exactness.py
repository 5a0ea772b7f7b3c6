"""kill -9 a real worker process at random points: final window values stay exact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, end_offsets, pipeline, produce
from tests.workers.test_step_windows import (
    assert_same,
    expected_windows,
    read_windows,
    trip_events,
    window_spec,
)

EVENTS = 100_000
PARTITIONS = 3


def _start_worker(
    manifest: Path, kafka: EmbeddedKafka, redis_url: str, log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowmill.cli",
            "worker",
            "--pipeline",
            str(manifest),
            "--step",
            "by-region",
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--redis-url",
            redis_url,
            "--metrics-port",
            "0",
            "--batch-size",
            "2000",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _processed(client: redis.Redis, name: str, topic: str) -> int:
    raw = client.hgetall(serving.checkpoint_key(name, "by-region"))
    return sum(
        int(v)
        for k, v in raw.items()
        if k.decode().startswith(f"{topic}:") and not k.decode().endswith(":wm")
    )


async def test_kill_9_at_random_points_keeps_windows_exact(
    kafka_broker: EmbeddedKafka,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    name = unique("crash")
    p = pipeline(name, [{"name": name, "partitions": PARTITIONS}], [window_spec("regions", name)])
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump(p.to_manifest()))
    create_topics(kafka_broker, p)
    events = trip_events(EVENTS, seed=11)
    await produce(kafka_broker.bootstrap_servers, name, events, key_field="trip_id")
    ends = await end_offsets(kafka_broker.bootstrap_servers, name, PARTITIONS)
    assert sum(ends.values()) == EVENTS

    rng = random.Random(5)
    log = tmp_path / "worker.log"
    kills = []
    for _ in range(4):
        worker = _start_worker(manifest, kafka_broker, redis_server.url, log)
        # Kill once it is part-way through: after some batches are durable, mid-batch.
        before = _processed(redis_client, name, name)
        deadline = time.monotonic() + 30
        while _processed(redis_client, name, name) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        kills.append(_processed(redis_client, name, name))
        if kills[-1] >= EVENTS:
            break
    assert kills[0] < EVENTS, f"worker finished before the first kill: {kills}"

    joined_before = log.read_text().count("step by-region assigned")
    worker = _start_worker(manifest, kafka_broker, redis_server.url, log)
    try:
        deadline = time.monotonic() + 120
        # Wait for this worker to join too: the kills may already have finished the
        # work, and a SIGTERM before the worker installs its handler proves nothing.
        while (
            _processed(redis_client, name, name) < EVENTS
            or log.read_text().count("step by-region assigned") == joined_before
        ):
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"stuck at {_processed(redis_client, name, name)}"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]

    assert_same(read_windows(redis_client, name, "regions"), expected_windows(events, 60_000))
