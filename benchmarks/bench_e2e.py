"""End-to-end latency rows of `make bench`: an event produced -> visible in the API.

A `flowmill worker` (the window step) and a `flowmill api` run as their own processes on
the benchmark's Kafka and Redis. This process produces at a fixed rate (wall-clock event
times, so windows are the live ones) and polls the API for one probe key every 2 ms; the
probe gets one event every 20 ms besides the load. A probe event is visible when the API
shows its window with at least its ordinal count (or a later window); its latency is that
moment minus the moment it was handed to the producer (linger included, as for any
producer). The highest sustainable rate is the highest tried whose load was sent in full
and whose p99 stayed under a second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaProducer

from flowmill.manifest import parse_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent / "contenders"))
import flowmill_step

PROBE = "probe"
PROBE_EVERY_S = 0.02
POLL_EVERY_S = 0.002
TICK_S = 0.005
KEYS = 200
PARTITIONS = 4


def manifest(name: str, topic: str) -> dict[str, Any]:
    """The worker benchmarks' window step (contenders/flowmill_step.py), count and sum."""
    return flowmill_step.manifest(
        name, topic, PARTITIONS, {"trips": "count", "revenue": {"sum": "fare"}}
    )


class Poller:
    """Reads the probe's current window over one keep-alive connection, every 2 ms."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        self.seen: list[tuple[float, int, int]] = []  # (time, window start, trips)

    async def run(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not stop.is_set():
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                body = await reader.readexactly(length)
                now = time.perf_counter()
                if head.startswith(b"HTTP/1.1 200"):
                    doc = orjson.loads(body)
                    self.seen.append((now, int(doc["start"]), int(doc["values"]["trips"])))
                await asyncio.sleep(POLL_EVERY_S)
        finally:
            writer.close()


async def load(
    bootstrap: str, topic: str, rate: float, seconds: float
) -> tuple[list[tuple[float, int, int]], float]:
    """Produce `rate` ev/s for `seconds`; returns the probe events (sent at, window start,
    ordinal in its window) and the rate achieved."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks=1, max_batch_size=1 << 20
    )
    await producer.start()
    probes: list[tuple[float, int, int]] = []
    counts: dict[int, int] = {}
    sent = 0
    began = time.perf_counter()
    next_probe = began
    try:
        tick = 0
        while True:
            now = time.perf_counter()
            elapsed = now - began
            if elapsed >= seconds:
                break
            due = int(rate * elapsed) - sent
            ms = int(time.time() * 1000)
            batches: dict[int, Any] = {}
            futures: list[Any] = []
            for i in range(max(0, due)):
                key = f"r{(sent + i) % KEYS}"
                value = orjson.dumps({"region_id": key, "fare": 1.5, "event_time": ms})
                p = hash(key) % PARTITIONS
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = producer.create_batch()
                if batch.append(key=None, value=value, timestamp=None) is None:  # full
                    futures.append(producer.send_batch(batch, topic, partition=p))
                    batch = batches[p] = producer.create_batch()
                    batch.append(key=None, value=value, timestamp=None)
            sent += max(0, due)
            futures += [producer.send_batch(b, topic, partition=p) for p, b in batches.items()]
            if now >= next_probe:
                start = ms - ms % 60_000
                counts[start] = counts.get(start, 0) + 1
                value = orjson.dumps({"region_id": PROBE, "fare": 1.0, "event_time": ms})
                probes.append((time.perf_counter(), start, counts[start]))
                futures.append(producer.send(topic, value, partition=0))
                next_probe += PROBE_EVERY_S
            for f in futures:
                await f
            tick += 1
            await asyncio.sleep(max(0.0, began + tick * TICK_S - time.perf_counter()))
        achieved = sent / (time.perf_counter() - began)
        await producer.flush()
    finally:
        await producer.stop()
    return probes, achieved


def latencies_ms(
    probes: list[tuple[float, int, int]], seen: list[tuple[float, int, int]]
) -> list[float]:
    out = []
    j = 0
    for sent_at, start, ordinal in probes:
        while j < len(seen) and seen[j][0] < sent_at:
            j += 1
        for at, s, trips in seen[j:]:
            if s > start or (s == start and trips >= ordinal):
                out.append((at - sent_at) * 1000)
                break
    return out


def quantiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98]}


def measure(
    bootstrap: str,
    redis_url: str,
    create_topic: Any,
    workdir: Path,
    start_api: Any,
    rates: list[float],
    search: list[float],
    seconds: float,
    log: Any,
) -> dict[str, Any]:
    name = f"e2e{time.time_ns() % 10**8}"
    topic = f"{name}-trips"
    create_topic(topic, PARTITIONS)
    path = workdir / f"{name}.yaml"
    doc = manifest(name, topic)
    parse_pipeline(doc)  # fails here, not in the worker, if the bench's manifest is wrong
    path.write_text(yaml.safe_dump(doc))
    worker = subprocess.Popen(
        [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(path), "--step",
         "agg", "--bootstrap-servers", bootstrap, "--redis-url", redis_url],
        stdout=subprocess.DEVNULL, stderr=(workdir / f"{name}-worker.log").open("wb"),
    )  # fmt: skip
    api, port = start_api(path, redis_url)
    url = f"/pipelines/{name}/tables/agg/keys/{PROBE}/windows/current"
    out: dict[str, Any] = {"rows": [], "sustainable_ev_per_s": None}
    try:
        asyncio.run(load(bootstrap, topic, 200, 3.0))  # the step joins and writes a window
        for rate, kind in [(r, "fixed") for r in rates] + [(r, "search") for r in search]:
            row = asyncio.run(_one(bootstrap, topic, port, url, rate, seconds))
            row["kind"] = kind
            out["rows"].append(row)
            log(
                f"e2e at {rate:,.0f} ev/s: sent {row['achieved_ev_per_s']:,.0f}/s, p50 "
                f"{_fmt(row['p50_ms'])} p99 {_fmt(row['p99_ms'])} ms"
            )
            if _sustained(row):
                out["sustainable_ev_per_s"] = max(out["sustainable_ev_per_s"] or 0, rate)
            elif kind == "search":
                break
    finally:
        worker.terminate()
        api.terminate()
        worker.wait(30)
        api.wait(30)
    return out


def _sustained(row: dict[str, Any]) -> bool:
    p99 = row["p99_ms"]
    return bool(row["achieved_ev_per_s"] >= 0.95 * row["rate"] and p99 is not None and p99 < 1000)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


async def _one(
    bootstrap: str, topic: str, port: int, url: str, rate: float, seconds: float
) -> dict[str, Any]:
    poller = Poller(port, url)
    stop = asyncio.Event()
    polling = asyncio.create_task(poller.run(stop))
    probes, achieved = await load(bootstrap, topic, rate, seconds)
    await asyncio.sleep(1.5)  # the last probes become visible
    stop.set()
    await polling
    lat = latencies_ms(probes, poller.seen)
    return {"rate": rate, "achieved_ev_per_s": achieved, "probes": len(probes),
            "visible": len(lat), **quantiles(lat)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps({"see": "benchmarks/bench.py"}))
