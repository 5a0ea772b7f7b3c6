"""Helpers for worker tests: build Pipelines, feed topics, run a step until it caught up,
run a worker process and kill -9 it mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flowmill import serving
from flowmill.local.kafka import EmbeddedKafka
from flowmill.manifest import parse_pipeline
from flowmill.spec import Pipeline, all_topics
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import wait_for


def pipeline(name: str, topics: list[dict[str, Any]], steps: list[dict[str, Any]]) -> Pipeline:
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": name},
            "spec": {"topics": topics, "steps": steps},
        }
    )


def create_topics(kafka: EmbeddedKafka, p: Pipeline) -> None:
    """Every topic the Pipeline needs, as `flowmill run` and the operator create them."""
    kafka.create_topics([(t.name, t.partitions) for t in all_topics(p)])


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | dict[str, Any]],
    key_field: str | None = None,
    partition: int | None = None,
) -> int:
    """Send events (dicts as JSON, bytes as they are); returns how many."""
    # Large batches: with aiokafka's 16 KB default a loaded machine sent ~2,300 events/s,
    # no faster than the autoscaling test's throttled worker drains them.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, enable_idempotence=True
    )
    await producer.start()
    count = 0
    try:
        futures = []
        for value in values:
            if isinstance(value, dict):
                key = str(value.get(key_field)).encode() if key_field else None
                payload = json.dumps(value).encode()
            else:
                key, payload = None, value
            futures.append(await producer.send(topic, payload, key=key, partition=partition))
            count += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


async def consume_all(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 0.5
) -> list[Any]:
    """Every committed record of a topic (read_committed), once `expected` arrived and
    `settle` more seconds showed nothing else (so "exactly N" is really checked)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(recs)
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            for recs in (await consumer.getmany(timeout_ms=100)).values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def counter_value(runner: StepRunner, name: str) -> float:
    metric = getattr(runner.metrics, name)
    return float(runner.metrics.labels(metric)._value.get())


async def run_step(
    p: Pipeline,
    step: str,
    bootstrap: str,
    redis_url: str | None,
    expect_in: int,
    timeout: float = 60.0,
    batch_size: int = 5000,
) -> StepRunner:
    """Run a step in this process until it consumed `expect_in` events, then stop it."""
    runner = StepRunner(p, step, WorkerConfig(bootstrap, redis_url, batch_size=batch_size))
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while counter_value(runner, "events_in") < expect_in:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"step {step} consumed {counter_value(runner, 'events_in')} of {expect_in}"
                )
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await runner.stop()
    return runner


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def start_worker(
    manifest: Path, step: str, kafka: EmbeddedKafka, redis_url: str, log: Path, batch_size: int
) -> subprocess.Popen[bytes]:
    """`flowmill worker` for one step as its own process (a kill -9 must kill a process,
    not a task), its output appended to `log` across restarts."""
    return subprocess.Popen(
        [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(manifest),
         "--step", step, "--bootstrap-servers", kafka.bootstrap_servers,
         "--redis-url", redis_url, "--metrics-port", "0", "--batch-size", str(batch_size)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def durable_events(client: redis.Redis, name: str, step: str, topic: str | None = None) -> int:
    """Events a step's Redis checkpoint holds as done: the sum of its `topic:partition`
    positions (of one input topic when given), not the `:wm`/`:seen` fields beside them."""
    raw = client.hgetall(serving.checkpoint_key(name, step))
    fields = ((k.decode(), int(v)) for k, v in raw.items())
    return sum(
        v for k, v in fields if k.count(":") == 1 and (topic is None or k.startswith(f"{topic}:"))
    )


MAX_KILL_DELAY_S = 0.3
"""How far past a durable batch a kill may land: within the next batches' work."""


def kill_9_mid_stream(
    start: Callable[[], subprocess.Popen[bytes]],
    progress: Callable[[], int],
    rng: random.Random,
    kills: int,
    stop_at: int | None = None,
) -> list[int]:
    """Starts a worker and kill -9s it once it made a batch durable, at a random point of
    the next MAX_KILL_DELAY_S, `kills` times (fewer if `progress()` reaches `stop_at`).
    Returns the progress after each kill."""
    after = []
    for _ in range(kills):
        worker = start()
        try:
            before = progress()
            # Start-up, and after a kill the rebalance that waits out the killed member's
            # session: a minute and more on a loaded machine.
            # Polled tightly: the kill's random delay counts from the durable batch, and a
            # worker at full speed gets through thousands of events in a 0.1 s poll.
            wait_for(
                lambda: progress() > before,  # noqa: B023
                120,
                "a durable batch",
                interval=0.005,
            )
            time.sleep(rng.uniform(0.0, MAX_KILL_DELAY_S))
        finally:
            os.kill(worker.pid, signal.SIGKILL)  # also when the wait failed: none left behind
            worker.wait()
        after.append(progress())
        if stop_at is not None and after[-1] >= stop_at:
            break
    return after


def stop_worker(worker: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM: the worker must finish its batch and exit 0 (its log tail if not)."""
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]
