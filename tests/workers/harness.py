"""Helpers for worker tests: build Pipelines, feed topics, run a step until it caught up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flowmill.local.kafka import EmbeddedKafka
from flowmill.manifest import parse_pipeline
from flowmill.spec import Pipeline, all_topics
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig


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
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=True)
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
