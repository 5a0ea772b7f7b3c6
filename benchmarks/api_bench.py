"""Throughput and latency of one `flowmill api` process, next to redis-benchmark GET on the
same Redis in the same run (so the figures can be read against what Redis alone does on
this machine).

    .venv/bin/python benchmarks/api_bench.py [--duration 10] [--connections 16]

It starts a redis-server (or uses --redis-url), fills a window table through the workers'
real Redis sink (the Lua script the workers run, without Kafka: only the API is measured),
starts `flowmill api` as its own process, and drives it from 127.0.0.1 with `wrk` when
installed, else with the bounded asyncio HTTP/1.1 load generator below. Not a test: it
prints a table and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
import yaml

from flowmill.local import find_binary
from flowmill.local.ports import free_port
from flowmill.local.redis import EmbeddedRedis
from flowmill.manifest import parse_pipeline
from flowmill.spec import Pipeline
from flowmill_workers.sinks.redis_tables import PartitionRange, RedisTableSink

PIPELINE = "bench"
TABLE = "regions"
KEYS = 200
WINDOWS = 60
MINUTE = 60_000
BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % MINUTE


def bench_pipeline() -> Pipeline:
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": PIPELINE},
            "spec": {
                "topics": [{"name": "trips"}],
                "steps": [
                    {
                        "name": "by-region",
                        "from": "trips",
                        "keyBy": "region_id",
                        "window": {"size": "1m", "eventTime": "event_time"},
                        "aggregate": {
                            "trips": "count",
                            "revenue": {"sum": "fare"},
                            "avg_fare": {"avg": "fare"},
                            "max_fare": {"max": "fare"},
                        },
                        "sink": {"redis": {"table": TABLE}},
                    }
                ],
            },
        }
    )


async def fill(url: str, pipeline: Pipeline) -> None:
    """KEYS keys x WINDOWS windows, written by the workers' sink script."""
    client = aioredis.from_url(url)
    step = pipeline.spec.step("by-region")
    sink = RedisTableSink(client, pipeline.name, step)
    aggregates = [("trips", "count", None), ("revenue", "sum", "fare"), ("avg_fare", "avg", "fare"),
                  ("max_fare", "max", "fare")]  # fmt: skip
    rng = random.Random(7)
    offset = 0
    for w in range(WINDOWS):
        start = BASE_MS + w * MINUTE
        updates = []
        for k in range(KEYS):
            fares = [rng.uniform(3, 60) for _ in range(rng.randint(1, 20))]
            updates.append(
                [
                    f"k{k}",
                    str(start),
                    [len(fares), sum(fares), [sum(fares), len(fares)], max(fares)],
                ]
            )
        pipe = client.pipeline(transaction=False)
        rng_ = PartitionRange("trips", 0, offset, offset + KEYS)
        await sink.apply_windows(pipe, rng_, updates, aggregates, MINUTE, 1440, None)
        await pipe.execute()
        offset += KEYS
    await client.aclose()


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


async def python_load(url: str, connections: int, duration: float, name: str) -> Result:
    """Keep-alive HTTP/1.1 GETs from `connections` coroutines for `duration` seconds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - began)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    return Result(
        name, len(latencies) / elapsed, q[49] * 1000, q[98] * 1000, len(latencies), errors
    )


def vegeta_paced(url: str, connections: int, rate: float, duration: float, name: str) -> Result:
    """Open loop at a fixed offered rate with vegeta (Go): requests leave on schedule
    whatever the answers take (a worker busy with a slow answer does not hold the next
    one back; at most `connections` are open, and a request waiting for one counts that
    wait), so p99 includes the queueing a closed loop leaves out, as wrk2 -R measures."""
    vegeta = str(find_binary("vegeta"))
    with tempfile.NamedTemporaryFile(suffix=".bin") as out:
        subprocess.run(
            [vegeta, "attack", f"-rate={int(rate)}/1s", f"-duration={duration}s",
             f"-max-connections={connections}", "-http2=false", "-timeout=10s",
             f"-output={out.name}"],
            input=f"GET {url}\n".encode(), check=True, capture_output=True,
        )  # fmt: skip
        done = subprocess.run(
            [vegeta, "report", "-type=json", out.name], check=True, capture_output=True
        )
    report = json.loads(done.stdout)
    latencies = report["latencies"]
    codes = report.get("status_codes") or {}
    ok = int(codes.get("200", 0))
    return Result(
        name, report["throughput"], latencies["50th"] / 1e6, latencies["99th"] / 1e6,
        int(report["requests"]), int(report["requests"]) - ok,
    )  # fmt: skip


def wrk_load(url: str, connections: int, duration: float, name: str) -> Result:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            raise RuntimeError(f"cannot read the {label}th percentile from wrk:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return Result(name, rps, ms("50"), ms("99"), total, errors)


def redis_benchmark(port: int, requests: int) -> Result:
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get", "-n",
         str(requests), "-c", "16", "--csv"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95...","p99...","max"
    row = next(line for line in out.splitlines() if line.startswith('"GET"'))
    cells = [c.strip('"') for c in row.split(",")]
    return Result("redis-benchmark GET (16 clients)", float(cells[1]), float(cells[4]),
                  float(cells[6]), requests, 0)  # fmt: skip


def start_api(manifest: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowmill.cli", "api", "--pipeline", str(manifest),
         "--port", str(port), "--redis-url", redis_url, "--log-level", "warning"],
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("flowmill api did not start")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--redis-url", help="use this Redis (default: start one)")
    args = parser.parse_args()
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)

    server = None
    if args.redis_url is None:
        server = EmbeddedRedis()
        server.start()
        redis_url = server.url
    else:
        redis_url = args.redis_url
    redis_port = urlsplit(redis_url).port or 6379
    pipeline = bench_pipeline()
    asyncio.run(fill(redis_url, pipeline))
    workdir = Path(tempfile.mkdtemp(prefix="flowmill-bench-"))
    manifest = workdir / "bench.yaml"
    manifest.write_text(yaml.safe_dump(pipeline.to_manifest()))
    proc, port = start_api(manifest, redis_url)
    base = f"http://127.0.0.1:{port}/pipelines/{PIPELINE}/tables/{TABLE}"
    scenarios = [
        ("window lookup (key's current window)", f"{base}/keys/k42/windows/current"),
        ("top-10 keys of the current window", f"{base}/windows/current/top?by=revenue&n=10"),
        ("range: a key's last 10 windows", f"{base}/keys/k42/windows/latest?n=10"),
    ]
    runs: list[list[Result]] = []
    try:
        for name, url in scenarios:
            assert httpx.get(url).status_code == 200, url
            load(use_wrk, url, args.connections, 2, name)  # warm-up: connections, scripts
        # Scenarios and Redis alone are interleaved run by run, so all see the same
        # background load of a shared machine.
        for _ in range(args.runs):
            row = [load(use_wrk, url, args.connections, args.duration, n) for n, url in scenarios]
            row.append(redis_benchmark(redis_port, 200_000))
            runs.append(row)
    finally:
        proc.terminate()
        proc.wait(15)
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    loadgen = "wrk -t1" if use_wrk else "asyncio HTTP/1.1 client"
    print(f"\nflowmill api, one process; {args.connections} connections; {args.runs} runs of "
          f"{args.duration:g}s; load from {loadgen}; {KEYS} keys x {WINDOWS} windows\n")  # fmt: skip
    print(f"{'scenario':<38} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'best req/s':>11} "
          f"{'its p99':>8} {'errors':>7}")  # fmt: skip
    for i in range(len(runs[0])):
        ranked = sorted((run[i] for run in runs), key=lambda r: r.rps)
        median, best = ranked[len(ranked) // 2], ranked[-1]
        errors = sum(r.errors for r in ranked)
        print(f"{median.name:<38} {median.rps:>8,.0f} {median.p50_ms:>7.2f} "
              f"{median.p99_ms:>7.2f} {best.rps:>11,.0f} {best.p99_ms:>8.2f} {errors:>7}")  # fmt: skip
    lookups = [run[0] for run in runs]
    met = sum(1 for r in lookups if r.rps >= 5000 and r.p99_ms <= 10)
    print(f"\n(req/s, p50, p99: the median run.) Target, window lookup >= 5,000 req/s with "
          f"p99 <= 10 ms: met in {met} of {len(lookups)} runs.")  # fmt: skip
    return 0


def load(use_wrk: bool, url: str, connections: int, duration: float, name: str) -> Result:
    if use_wrk:
        return wrk_load(url, connections, duration, name)
    return asyncio.run(python_load(url, connections, duration, name))


if __name__ == "__main__":
    sys.exit(main())
