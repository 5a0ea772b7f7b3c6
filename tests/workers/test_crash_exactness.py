"""kill -9 a real worker process at random points: final window values stay exact."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import redis
import yaml

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.harness.waiting import unique
from tests.workers.harness import (
    create_topics,
    durable_events,
    end_offsets,
    kill_9_mid_stream,
    pipeline,
    produce,
    start_worker,
    stop_worker,
)
from tests.workers.test_step_windows import (
    assert_same,
    expected_windows,
    read_windows,
    trip_events,
    window_spec,
)

# 40 batches of 1,000: enough for four kills to land mid-stream, each after some durable
# batches (the first kill is asserted to come before the end).
EVENTS = 40_000
PARTITIONS = 3


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

    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        return start_worker(manifest, "by-region", kafka_broker, redis_server.url, log, 1000)

    progress = lambda: durable_events(redis_client, name, "by-region", name)  # noqa: E731
    # Kill once it is part-way through: after some batches are durable, mid-batch.
    kills = kill_9_mid_stream(start, progress, random.Random(5), 4, stop_at=EVENTS)
    assert kills[0] < EVENTS, f"worker finished before the first kill: {kills}"

    joined_before = log.read_text().count("step by-region assigned")
    worker = start()
    try:
        deadline = time.monotonic() + 120
        # Wait for this worker to join too: the kills may already have finished the
        # work, and a SIGTERM before the worker installs its handler proves nothing.
        while (
            progress() < EVENTS or log.read_text().count("step by-region assigned") == joined_before
        ):
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"stuck at {progress()}"
            time.sleep(0.1)
    finally:
        stop_worker(worker, log)

    assert_same(read_windows(redis_client, name, "regions"), expected_windows(events, 60_000))
