"""Helpers for API tests: a real uvicorn server in a thread, a Pipeline whose tables are
filled by the real worker steps, and the values those tables should hold, computed here
from the events independently of the workers."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import uvicorn
from fastapi import FastAPI

from flowmill.local import find_binary
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK, free_port, spawn, tail, terminate
from flowmill.spec import Pipeline
from flowmill_api import ApiSettings, create_app
from flowmill_api.server import ServerLimits, server_config
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, pipeline, produce, run_step

MINUTE = 60_000
BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % MINUTE
REGIONS = ["north", "south", "east", "west"]
WINDOW_AGGREGATES = {
    "trips": "count",
    "revenue": {"sum": "fare"},
    "avg_fare": {"avg": "fare"},
    "min_fare": {"min": "fare"},
    "max_fare": {"max": "fare"},
    "riders": {"distinct": "rider"},
}


class ApiServer:
    """uvicorn serving an app on a free loopback port, in a thread with its own loop (so
    the app's Redis pool lives on the loop that serves it, as in production)."""

    def __init__(self, app: FastAPI, limits: ServerLimits | None = None) -> None:
        self.port = free_port()
        # The configuration `flowmill api` serves with (its protocol, proxies, limits).
        config = server_config(
            app,
            "127.0.0.1",
            self.port,
            limits or ServerLimits(),
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(
    pipelines: list[Pipeline], redis_url: str, limits: ServerLimits | None = None, **settings: Any
) -> ApiServer:
    return ApiServer(create_app(pipelines, redis_url, ApiSettings(**settings)), limits)


@contextlib.contextmanager
def loading_redis(directory: Path, keys: int = 20_000) -> Iterator[str]:
    """The URL of a real redis-server that answers every command with `LOADING` for
    about 20 s: it restarts from a dump of `keys` keys, loading each 1 ms apart (Redis'
    own `key-load-delay`) and answering clients between keys."""
    binary = str(find_binary("redis-server"))
    port = free_port()
    common = ["--port", str(port), "--bind", LOOPBACK, "--dir", str(directory),
              "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
    log = directory / "redis.log"
    proc = spawn([binary, *common], log)
    try:
        with redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=0.5) as client:
            _wait_for_redis(client, proc, log, loading=False)
            client.eval(f"for i = 1, {keys} do redis.call('SET', 'k' .. i, i) end", 0)
            client.save()
            client.shutdown(nosave=True)
        proc.wait(10)
        proc = spawn(
            [binary, *common, "--key-load-delay", "1000",
             "--loading-process-events-interval-bytes", "1024"],
            log,
        )  # fmt: skip
        with redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=0.5) as client:
            _wait_for_redis(client, proc, log, loading=True)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        terminate(proc, grace=5)


def _wait_for_redis(
    client: redis.Redis, proc: subprocess.Popen[bytes], log: Path, *, loading: bool
) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({proc.returncode}):\n{tail(log)}")
        try:
            client.ping()
            if not loading:
                return
            raise RuntimeError("redis-server finished loading before it was used")
        except redis.BusyLoadingError:
            if loading:
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"redis-server did not answer within 15 s:\n{tail(log)}")


# -- events and expectations -------------------------------------------------------------


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def trips(n: int, seed: int, start_ms: int = BASE_MS, minutes: int = 5) -> list[dict[str, Any]]:
    """Trips spread evenly over `minutes` from `start_ms`, in time order."""
    rng = random.Random(seed)
    span = minutes * MINUTE
    return [
        {
            "trip_id": f"t{seed}-{i}",
            "region_id": rng.choice(REGIONS),
            "rider": f"r{rng.randrange(40)}",
            "fare": round(rng.uniform(3, 60), 2),
            "event_time": iso(start_ms + int(i * span / n)),
        }
        for i in range(n)
    ]


def expected_windows(
    events: list[dict[str, Any]], size_ms: int = MINUTE
) -> dict[tuple[str, int], dict[str, float]]:
    """(region, window start) -> aggregates, computed from the events."""
    acc: dict[tuple[str, int], dict[str, Any]] = defaultdict(lambda: {"fares": [], "riders": set()})
    for e in events:
        ts = int(datetime.fromisoformat(e["event_time"]).timestamp() * 1000)
        a = acc[(e["region_id"], ts - ts % size_ms)]
        a["fares"].append(e["fare"])
        a["riders"].add(e["rider"])
    return {
        k: {
            "trips": len(a["fares"]),
            "revenue": sum(a["fares"]),
            "avg_fare": sum(a["fares"]) / len(a["fares"]),
            "min_fare": min(a["fares"]),
            "max_fare": max(a["fares"]),
            "riders": len(a["riders"]),
        }
        for k, a in acc.items()
    }


def vehicles(n_vehicles: int, updates: int, seed: int) -> list[dict[str, Any]]:
    """Position reports around Manhattan; each vehicle reports `updates` times."""
    rng = random.Random(seed)
    out = []
    for round_ in range(updates):
        for v in range(n_vehicles):
            out.append(
                {
                    "vehicle_id": f"v{v:03d}",
                    "lat": round(40.70 + rng.uniform(0, 0.1), 6),
                    "lon": round(-74.02 + rng.uniform(0, 0.1), 6),
                    "speed": round(rng.uniform(0, 80), 1),
                    "round": round_,
                }
            )
    return out


def latest_by_vehicle(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for e in events:
        out[e["vehicle_id"]] = e
    return out


def close(a: float | None, b: float, rel: float = 1e-9) -> bool:
    return a is not None and abs(a - b) <= rel * max(abs(a), abs(b), 1.0)


def assert_window(values: dict[str, Any], want: dict[str, float]) -> None:
    assert set(values) == set(WINDOW_AGGREGATES)
    for name, expected in want.items():
        got = values[name]
        if name in ("trips", "riders"):
            assert got == expected and isinstance(got, int), (name, got, expected)
        else:
            assert close(got, expected), (name, got, expected)


# -- a pipeline filled by the real workers ------------------------------------------------


@dataclass
class Served:
    """A Pipeline whose tables the real workers filled, and the events they were fed."""

    pipeline: Pipeline
    kafka: EmbeddedKafka
    redis_url: str
    trips: list[dict[str, Any]] = field(default_factory=list)
    vehicles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def trips_topic(self) -> str:
        return f"{self.name}-trips"

    @property
    def vehicles_topic(self) -> str:
        return f"{self.name}-vehicles"

    def base(self, table: str) -> str:
        return f"/pipelines/{self.name}/tables/{table}"

    async def add_trips(self, events: list[dict[str, Any]], steps: tuple[str, ...]) -> None:
        """Produce trips and run the given steps until each consumed them."""
        await produce(self.kafka.bootstrap_servers, self.trips_topic, events, "trip_id")
        self.trips += events
        for step in steps:
            await run_step(
                self.pipeline, step, self.kafka.bootstrap_servers, self.redis_url, len(events)
            )

    async def add_vehicles(
        self, events: list[dict[str, Any]], steps: tuple[str, ...] = ("positions",)
    ) -> None:
        await produce(self.kafka.bootstrap_servers, self.vehicles_topic, events, "vehicle_id")
        self.vehicles += events
        for step in steps:
            await run_step(
                self.pipeline, step, self.kafka.bootstrap_servers, self.redis_url, len(events)
            )


def build_pipeline(prefix: str) -> Pipeline:
    """Trips windowed per region (every aggregate op), the same trips in hopping windows
    that are not published, vehicles' latest positions with geo, and their latest speeds
    only (a latest table without geo)."""
    name = unique(prefix)
    trips_topic, vehicles_topic = f"{name}-trips", f"{name}-vehicles"
    return pipeline(
        name,
        [{"name": trips_topic, "partitions": 2}, {"name": vehicles_topic, "partitions": 2}],
        [
            {
                "name": "by-region",
                "from": trips_topic,
                "keyBy": "region_id",
                "window": {"size": "1m", "eventTime": "event_time"},
                "aggregate": WINDOW_AGGREGATES,
                "sink": {"redis": {"table": "regions"}},
            },
            {
                "name": "hopping",
                "from": trips_topic,
                "keyBy": "region_id",
                "window": {
                    "type": "hopping",
                    "size": "2m",
                    "advance": "1m",
                    "eventTime": "event_time",
                },
                "aggregate": {"trips": "count"},
                "sink": {"redis": {"table": "hops", "publish": False}},
            },
            {
                "name": "positions",
                "from": vehicles_topic,
                "keyBy": "vehicle_id",
                "latest": {},
                "sink": {"redis": {"table": "vehicles", "geo": {"lat": "lat", "lon": "lon"}}},
            },
            {
                "name": "speeds",
                "from": vehicles_topic,
                "keyBy": "vehicle_id",
                "latest": {"fields": ["speed"]},
                "sink": {"redis": {"table": "speeds"}},
            },
        ],
    )


async def fill(kafka: EmbeddedKafka, redis_url: str, prefix: str) -> Served:
    p = build_pipeline(prefix)
    create_topics(kafka, p)
    served = Served(p, kafka, redis_url)
    await served.add_trips(trips(1200, seed=11), ("by-region", "hopping"))
    await served.add_vehicles(vehicles(30, 3, seed=12), ("positions", "speeds"))
    return served


# -- live streams --------------------------------------------------------------------------


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str | None, Any]]:
    """(event name, id, decoded data) of each SSE event of a streaming response."""
    name: str = "message"
    ident: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield name, ident, orjson.loads("\n".join(data))
            name, ident, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            fld, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if fld == "event":
                name = value
            elif fld == "id":
                ident = value
            elif fld == "data":
                data.append(value)


async def collect(
    stream: AsyncIterator[tuple[str, str | None, Any]],
    until: Any,
    timeout: float = 20.0,
) -> list[tuple[str, str | None, Any]]:
    """Events of `stream` until `until(events)` holds (or the timeout fails the test)."""
    seen: list[tuple[str, str | None, Any]] = []

    async def run() -> None:
        async for event in stream:
            seen.append(event)
            if until(seen):
                return

    await asyncio.wait_for(run(), timeout)
    return seen
