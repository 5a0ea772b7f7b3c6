"""flowmill's window step as it runs in a worker (StepRunner: batched fetch, the columnar
path, the fenced Redis writes with checkpoints), timed from its first fetched record to
the moment the last batch is durable in Redis; the windows are read back from Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from _common import Timer, config, emit, window_key

from flowmill import serving
from flowmill.manifest import parse_pipeline
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig

AGGREGATES: dict[str, Any] = {
    "trips": "count",
    "revenue": {"sum": "fare"},
    "avg_fare": {"avg": "fare"},
    "max_fare": {"max": "fare"},
}
"""What the worker benchmarks aggregate per key and minute (bench_e2e.py: a subset)."""


def manifest(
    name: str, topic: str, partitions: int, aggregates: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The benchmarks' window step (step `agg`, table `agg`): trips keyed by region_id in
    1-minute event-time windows, written to Redis; every benchmark builds it here."""
    return {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "topics": [{"name": topic, "partitions": partitions}],
            "steps": [
                {
                    "name": "agg",
                    "from": topic,
                    "keyBy": "region_id",
                    "window": {"size": "1m", "eventTime": "event_time"},
                    "aggregate": AGGREGATES if aggregates is None else aggregates,
                    "sink": {"redis": {"table": "agg", "publish": False}},
                }
            ],
        },
    }


def pipeline(
    name: str, topic: str, partitions: int, aggregates: dict[str, Any] | None = None
) -> Any:
    return parse_pipeline(manifest(name, topic, partitions, aggregates))


def read_windows(url: str, name: str) -> dict[str, list[float]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = serving.table_prefix(name, "agg") + ":w:"
    out: dict[str, list[float]] = {}
    hkeys = list(client.scan_iter(match=prefix + "*", count=10_000))
    # One round trip per thousand windows: the memory part reads a million of them back.
    for chunk in range(0, len(hkeys), 1000):
        pipe = client.pipeline(transaction=False)
        for hkey in hkeys[chunk : chunk + 1000]:
            pipe.hmget(hkey, "trips", "revenue")
        for hkey, row in zip(hkeys[chunk : chunk + 1000], pipe.execute(), strict=True):
            key, start = hkey[len(prefix) :].rsplit(":", 1)
            out[window_key(key, int(start))] = [int(row[0]), float(row[1])]
    client.close()
    return out


async def main() -> None:
    cfg = config()
    name = f"bench{time.time_ns() % 10**9}"
    runner = StepRunner(
        pipeline(name, cfg["topic"], cfg["partitions"]),
        "agg",
        # WorkerConfig's defaults, the fetch sizes of the raw aiokafka contender.
        WorkerConfig(cfg["bootstrap"], cfg["redis_url"]),
    )
    await runner.start()
    timer = Timer()
    assert runner.consumer is not None
    fetch = runner.consumer.getmany

    async def timed_fetch(*args: Any, **kwargs: Any) -> Any:
        batch = await fetch(*args, **kwargs)
        if batch:
            timer.begin()
        return batch

    runner.consumer.getmany = timed_fetch  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    counter = runner.metrics.labels(runner.metrics.events_in)
    total = cfg["total"]
    while counter._value.get() < total:  # type: ignore[attr-defined]
        if task.done():
            task.result()
        await asyncio.sleep(0.002)
    timer.stop()
    stop.set()
    await task
    await runner.stop()
    emit(int(counter._value.get()), timer, read_windows(cfg["redis_url"], name))  # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main())
