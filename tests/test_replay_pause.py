"""Pause, resume and replay of a running `flowmill run` (docs/replay.md), on the session's
Kafka and Redis: events are produced here with known record times, and the served windows
are compared with windows computed here.

- pause stops the step (status "paused"), events written meanwhile wait; resume: every
  event counted once (no loss, no duplicates);
- replay from a time, while paused: the table is emptied and marked rebuilding up to where
  the step had got, its positions move to the first offsets at that time; on resume the
  table equals a fresh run over the events from that time on, and is exact again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis
import yaml
from aiokafka import AIOKafkaProducer

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.run.control import request
from flowmill.run.local_run import LocalRun
from flowmill.testing.observe import window_table
from tests.harness.waiting import unique, wait_for

MINUTE = 60_000
# Record times of the last hour: older ones would be the broker's to delete (retention.ms
# counts from record time), and a replay would find the partition's start moved past them.
T0 = int(time.time() * 1000) - 3_600_000
T0 -= T0 % MINUTE


def events(first: int, count: int) -> list[dict[str, Any]]:
    """Event i at T0 + 7 s * i (record time), key k0..k2, value i."""
    return [{"k": f"k{i % 3}", "v": i, "ts": T0 + 7_000 * i} for i in range(first, first + count)]


async def _produce(bootstrap: str, topic: str, batch: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, json.dumps(e).encode(), key=e["k"].encode(), timestamp_ms=e["ts"]
            )
            for e in batch
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, batch: list[dict[str, Any]]) -> None:
    asyncio.run(_produce(bootstrap, topic, batch))


def windows_of(batch: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    acc: dict[tuple[str, int], list[int]] = defaultdict(list)
    for e in batch:
        acc[(e["k"], e["ts"] - e["ts"] % MINUTE)].append(e["v"])
    return {w: {"n": len(vs), "total": sum(vs)} for w, vs in acc.items()}


def test_pause_resume_and_replay_from_a_time(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    name = unique("replay")
    topic = f"{name}-in"
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "flowmill.dev/v1alpha1",
                "kind": "Pipeline",
                "metadata": {"name": name},
                "spec": {
                    "topics": [{"name": topic, "partitions": 2}],
                    "steps": [
                        {
                            "name": "counts",
                            "from": topic,
                            "keyBy": "k",
                            "window": {"size": "1m", "allowedLateness": "1h"},
                            "aggregate": {"n": "count", "total": {"sum": "v"}},
                            "sink": {"redis": {"table": "counts"}},
                        }
                    ],
                },
            }
        )
    )
    bootstrap = kafka_broker.bootstrap_servers
    data_dir = tmp_path / "run"
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    status_key = serving.status_key(name, "counts")

    def table() -> dict[tuple[str, int], dict[str, Any]]:
        return {(w.key, w.start): w.values for w in window_table(client, name, "counts")}

    def served(expected: dict[tuple[str, int], dict[str, Any]], what: str) -> None:
        try:
            wait_for(
                lambda: table() == expected and not client.hgetall(status_key),
                60,
                f"{what}: the table equal to the windows computed here, and exact",
            )
        except TimeoutError:
            assert table() == expected, what  # the diff
            assert client.hgetall(status_key) == {}, what
            raise

    def step_state(run: LocalRun) -> str:
        return next(r.state for r in run.status().rows if r.label == "step/counts")

    first, second = events(0, 40), events(40, 40)
    with LocalRun(
        manifest,
        bootstrap_servers=bootstrap,
        redis_url=redis_server.url,
        with_api=False,
        data_dir=data_dir,
        notify=lambda message: None,
    ) as run:
        run.wait_ready(60)
        produce(bootstrap, topic, first)
        served(windows_of(first), "first batch")

        reply = request(data_dir, {"action": "pause"})
        assert reply["ok"], reply
        wait_for(lambda: step_state(run) == "paused", 10, "the step shown paused")
        produce(bootstrap, topic, second)
        assert table() == windows_of(first)  # the step is stopped: nothing moved
        assert request(data_dir, {"action": "resume"})["ok"]
        served(windows_of(first + second), "after resume")

        # Replay from the middle of a window, while paused: nothing runs meanwhile, so
        # what the reset left can be looked at.
        assert request(data_dir, {"action": "pause"})["ok"]
        since = T0 + 7_000 * 25 + 3_000
        reply = request(data_dir, {"action": "replay", "step": "counts", "fromTimeMs": since})
        assert reply["ok"], reply
        assert table() == {}
        marks = client.hgetall(status_key)
        assert marks and all(f.startswith(f"rebuilding:{topic}:") for f in marks), marks
        checkpoint = client.hgetall(serving.checkpoint_key(name, "counts"))
        for field, until in marks.items():
            assert int(checkpoint[field.removeprefix("rebuilding:")]) < int(until)
        assert not any(f.endswith(":wm") for f in checkpoint)  # watermarks reset too
        refused = request(data_dir, {"action": "replay", "step": "nope", "fromOffset": 0})
        assert not refused["ok"] and "no step 'nope'" in refused["message"]

        assert request(data_dir, {"action": "resume"})["ok"]
        # A fresh run over the same range: the events at or after `since`.
        served(windows_of([e for e in first + second if e["ts"] >= since]), "after replay")
        wait_for(lambda: step_state(run) == "ready", 10, "the step ready again")
    client.close()


def test_replay_reset_command_resets_a_stopped_step(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """`flowmill replay-reset` (what the operator's replay Job runs), Kafka and Redis from
    the environment as in the step's pod: for a step with no worker running, the group's
    offsets and the checkpoints move to the first records at the time (by the offsets
    Kafka gave the records produced here), the table's data goes, each partition the
    step had passed is marked rebuilding up to where it had got."""
    import os
    import subprocess
    import sys

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    from flowmill.spec import consumer_group

    name = unique("reset")
    topic = f"{name}-in"
    manifest = tmp_path / "pipeline.yaml"
    step = {
        "name": "counts",
        "from": topic,
        "keyBy": "k",
        "window": {"size": "1m"},
        "aggregate": {"n": "count"},
        "sink": {"redis": {"table": "counts"}},
    }
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "flowmill.dev/v1alpha1",
                "kind": "Pipeline",
                "metadata": {"name": name},
                "spec": {"topics": [{"name": topic, "partitions": 2}], "steps": [step]},
            }
        )
    )
    bootstrap = kafka_broker.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    placed = []  # (partition, offset, record time)
    for i, e in enumerate(events(0, 20)):
        sent = producer.send(
            topic,
            json.dumps(e).encode(),
            key=e["k"].encode(),
            timestamp_ms=e["ts"],
            partition=i % 2,
        )
        meta = sent.get(timeout=10)
        placed.append((meta.partition, meta.offset, e["ts"]))
    producer.close()
    ends = {p: 1 + max(o for q, o, _ in placed if q == p) for p in (0, 1)}
    since = T0 + 7_000 * 12
    start = {
        p: min((o for q, o, ts in placed if q == p and ts >= since), default=ends[p])
        for p in (0, 1)
    }
    # Where the step had got: everything, as its checkpoints and the group say.
    group = consumer_group(name, "counts")
    committer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    committer.assign(tps)
    committer.commit({tp: OffsetAndMetadata(ends[tp.partition], "", -1) for tp in tps})
    committer.close()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    checkpoint = serving.checkpoint_key(name, "counts")
    client.hset(checkpoint, mapping={f"{topic}:{p}": ends[p] for p in (0, 1)})
    data = serving.window_key(name, "counts", "k0", T0)
    client.hset(data, mapping={"n": 99})

    env = {**os.environ, "FLOWMILL_BOOTSTRAP_SERVERS": bootstrap}
    env["FLOWMILL_REDIS_URL"] = redis_server.url
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(since / 1000, UTC).isoformat().replace("+00:00", "Z")
    command = [str(Path(sys.executable).parent / "flowmill"), "replay-reset"]
    done = subprocess.run(
        [*command, "--pipeline", str(manifest), "--step", "counts", "--from", moment],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"replayed {name} step counts" in done.stdout
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    assert {tp.partition: reader.committed(tp) for tp in tps} == start
    reader.close()
    assert client.hgetall(checkpoint) == {f"{topic}:{p}": str(start[p]) for p in (0, 1)}
    assert not client.exists(data)
    assert client.hgetall(serving.status_key(name, "counts")) == {
        serving.rebuilding_field(topic, p): str(ends[p]) for p in (0, 1) if ends[p] > start[p]
    }
