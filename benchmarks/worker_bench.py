"""Throughput of a keyed tumbling-window aggregation, next to a raw aiokafka consumer on
the same topic, in the same run (the machine is shared and noisy: compare ratios).

    .venv/bin/python benchmarks/worker_bench.py [--events 400000] [--keys 200] [--runs 2]

Starts its own Kafka broker and Redis server (from scripts/provision.sh) unless
--bootstrap-servers/--redis-url are given, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent / "contenders"))
from flowmill_step import pipeline as window_step  # what every worker benchmark measures

PARTITIONS = 1  # one worker process reads every partition anyway; one keeps it comparable


def events(n: int, keys: int) -> Iterator[bytes]:
    rng = random.Random(1)
    base = 1_763_800_000_000
    for i in range(n):
        yield json.dumps(
            {
                "trip_id": i,
                "region_id": f"r{rng.randrange(keys)}",
                "fare": round(rng.uniform(3, 60), 2),
                "event_time": base + i * 3,  # epoch ms: ~20 minutes of windows
            }
        ).encode()


async def fill(bootstrap: str, topic: str, n: int, keys: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for value in events(n, keys):
            pending.append(await producer.send(topic, value))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n / (time.perf_counter() - started)


async def raw_consumer(bootstrap: str, topic: str, n: int, decode: bool) -> float:
    """The floor a Python consumer cannot beat: fetch (and optionally decode) only."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    seen = 0
    started = None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if started is None and batch:
                started = time.perf_counter()
            for records in batch.values():
                seen += len(records)
                if decode:
                    for r in records:
                        json.loads(r.value)
    finally:
        await consumer.stop()
    assert started is not None
    return n / (time.perf_counter() - started)


async def flowmill_step(bootstrap: str, redis_url: str, topic: str, n: int) -> float:
    name = f"bench{time.time_ns() % 10**9}"
    pipeline = window_step(name, topic, PARTITIONS)
    runner = StepRunner(pipeline, "agg", WorkerConfig(bootstrap, redis_url))
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    counter = runner.metrics.labels(runner.metrics.events_in)
    started = None
    while counter._value.get() < n:  # type: ignore[attr-defined]
        if started is None and counter._value.get() > 0:  # type: ignore[attr-defined]
            started = time.perf_counter()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    stop.set()
    await task
    await runner.stop()
    return n / elapsed


def faust_agent(bootstrap: str, topic: str, n: int, take: int) -> float:
    """benchmarks/faust_baseline.py in a subprocess (Faust runs its own event loop)."""
    env = dict(
        os.environ,
        FAUST_BROKER=f"kafka://{bootstrap}",
        FAUST_TOPIC=topic,
        FAUST_EVENTS=str(n),
        FAUST_TAKE=str(take),
    )
    script = Path(__file__).with_name("faust_baseline.py")
    out = subprocess.run(
        [sys.executable, str(script), "worker", "-l", "warn"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for line in (out.stdout + out.stderr).splitlines():
        if "FAUST_RESULT" in line:
            # Faust routes stdout through its logger, so the figure sits mid-line.
            return float(line.split("FAUST_RESULT", 1)[1].split()[0])
    raise RuntimeError(f"faust baseline failed: {out.stderr[-2000:]}")


async def main(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers
        redis_url = args.redis_url
        if not bootstrap:
            kafka = stack.enter_context(EmbeddedKafka())
            bootstrap = kafka.bootstrap_servers
        else:
            kafka = None
        if not redis_url:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        topic = f"bench-{time.time_ns() % 10**9}"
        if kafka is not None:
            kafka.create_topics([(topic, PARTITIONS)])
        produced = await fill(bootstrap, topic, args.events, args.keys)
        rows: dict[str, list[float]] = {
            "raw aiokafka": [],
            "raw aiokafka + json": [],
            "flowmill window step": [],
        }
        if args.faust:
            rows["faust agent"] = []
            rows["faust agent, take(1000)"] = []
        for _ in range(args.runs):
            if args.faust:
                rows["faust agent"].append(faust_agent(bootstrap, topic, args.events, 0))
                rows["faust agent, take(1000)"].append(
                    faust_agent(bootstrap, topic, args.events, 1000)
                )
            rows["raw aiokafka"].append(await raw_consumer(bootstrap, topic, args.events, False))
            rows["raw aiokafka + json"].append(
                await raw_consumer(bootstrap, topic, args.events, True)
            )
            rows["flowmill window step"].append(
                await flowmill_step(bootstrap, redis_url, topic, args.events)
            )
        raw = statistics.median(rows["raw aiokafka"])
        print(
            f"\n{args.events:,} events, {args.keys} keys, 1-minute tumbling windows "
            f"(count, sum, avg, max), Redis sink; produced at {produced:,.0f} ev/s\n"
        )
        print(f"| {'consumer':<24} | {'events/s (median)':>18} | {'runs':<28} | {'vs raw':>6} |")
        print(f"|{'-' * 26}|{'-' * 20}|{'-' * 30}|{'-' * 8}|")
        for label, values in rows.items():
            median = statistics.median(values)
            runs = ", ".join(f"{v:,.0f}" for v in values)
            print(f"| {label:<24} | {median:>18,.0f} | {runs:<28} | {median / raw:>6.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--redis-url")
    parser.add_argument("--faust", action="store_true", help="also run a Faust agent (slow)")
    asyncio.run(main(parser.parse_args()))
