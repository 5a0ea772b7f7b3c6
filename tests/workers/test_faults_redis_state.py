"""Redis loses its data (kill -9 without persistence, an empty server back on the same
port): the step notices the missing checkpoint, rebuilds its table from Kafka and every
window is exact again. With AOF (appendfsync always or everysec) the checkpoint and the
data come back together, so the step simply resumes from what Redis kept."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowmill import serving
from flowmill.local import find_binary
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK, free_port
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from flowmill_workers.sinks.redis_tables import status_key
from tests.harness.waiting import unique
from tests.harness.waiting import wait_for as poll_until
from tests.workers.harness import counter_value, create_topics, pipeline, produce

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % 60_000
EVENTS, KEYS, MINUTES, PARTITIONS = 12_000, 20, 30, 3  # 600 windows


class RedisProcess:
    """A redis-server of this test's own, killed with SIGKILL and restarted on the same
    port and directory (so an AOF, when enabled, is what it comes back with)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        argv = [str(find_binary("redis-server")), "--port", str(self.port), "--bind", LOOPBACK,
                "--save", "", "--dir", str(self.directory), *self.extra]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        with redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=0.5) as probe:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not answer PING"
                time.sleep(0.05)

    def kill_9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port)


@pytest.fixture
def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path, *getattr(request, "param", ("--appendonly", "no")))
    server.start()
    yield server
    if server.proc is not None:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def events() -> list[dict[str, Any]]:
    return [
        {"k": f"k{i % KEYS}", "t": BASE_MS + (i * MINUTES * 60_000) // EVENTS, "v": i % 97}
        for i in range(EVENTS)
    ]


def expected(evs: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, float]]:
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for e in evs:
        a = acc[(e["k"], e["t"] - e["t"] % 60_000)]
        a[0] += 1
        a[1] += e["v"]
    return {k: (int(n), s) for k, (n, s) in acc.items()}


def stored(client: redis.Redis, name: str) -> dict[tuple[str, int], tuple[int, float]]:
    out = {}
    for key in client.zrange(serving.keys_key(name, "t"), 0, -1):
        for start in client.zrange(serving.window_index_key(name, "t", key.decode()), 0, -1):
            h = client.hgetall(serving.window_key(name, "t", key.decode(), int(start)))
            out[(key.decode(), int(start))] = (int(h[b"n"]), float(h[b"total"]))
    return out


def wait_exact(
    client: redis.Redis,
    name: str,
    want: dict[tuple[str, int], tuple[int, float]],
    timeout: float,
    what: str,
    *,
    interval: float,
    check: Callable[[], object] = lambda: None,
) -> None:
    """Until the stored windows equal `want` (calling `check` on each try, e.g. that the
    workers are alive); on timeout, fail with the windows that differ."""

    def exact() -> bool:
        check()
        return stored(client, name) == want

    try:
        poll_until(exact, timeout, what, interval=interval)
    except TimeoutError:
        got = stored(client, name)
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        raise AssertionError(
            f"{len(wrong)} of {len(want)} windows wrong (got, want): "
            f"{list(wrong.items())[:5]}; extra: {len(set(got) - set(want))}"
        ) from None


def processed(client: redis.Redis, name: str) -> int:
    try:
        raw = client.hgetall(serving.checkpoint_key(name, "sums"))
    except redis.RedisError:
        return -1
    return sum(int(v) for k, v in raw.items() if not k.endswith(b":wm"))


def step(topic: str) -> dict[str, Any]:
    return {
        "name": "sums",
        "from": topic,
        "keyBy": "k",
        "window": {"size": "1m", "eventTime": "t", "retain": 100},
        "aggregate": {"n": "count", "total": {"sum": "v"}},
        "sink": {"redis": {"table": "t"}},
    }


async def wait_for(ok: Any, what: str, task: asyncio.Task[None], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if task.done():
            task.result()
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.05)


async def run_until(
    runner: StepRunner, ok: Any, what: str
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_for(ok, what, task)
    return stop, task


async def stop_runner(runner: StepRunner, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task
    await runner.stop()


async def test_redis_emptied_under_a_running_step_is_rebuilt_exactly(
    kafka_broker: EmbeddedKafka, own_redis: RedisProcess
) -> None:
    """The issue's case: before, 255 of 600 windows were missing and 5 under-counted,
    with the worker ready and silent. Redis is killed and comes back empty while the
    step runs; the script finds no checkpoint where one was expected, the step rebuilds
    every partition from offset 0, and all 600 windows are exact."""
    name = unique("lost")
    p = pipeline(name, [{"name": name, "partitions": PARTITIONS}], [step(name)])
    create_topics(kafka_broker, p)
    evs = events()
    half = EVENTS // 2
    bootstrap = kafka_broker.bootstrap_servers
    await produce(bootstrap, name, evs[:half], key_field="k")
    client = own_redis.client()
    runner = StepRunner(p, "sums", WorkerConfig(bootstrap, own_redis.url, batch_size=500))
    stop, task = await run_until(runner, lambda: processed(client, name) == half, "half")
    try:
        own_redis.kill_9()
        await asyncio.sleep(1.0)
        own_redis.start()
        assert processed(client, name) == 0
        await produce(bootstrap, name, evs[half:], key_field="k")
        await wait_for(lambda: processed(client, name) == EVENTS, "all events", task)
        await wait_for(lambda: runner.ready()[0], "ready after the rebuild", task)
    finally:
        await stop_runner(runner, stop, task)
    assert counter_value(runner, "state_rebuilds") >= 1
    assert client.hgetall(status_key(name, "t")) == {}  # rebuilt, nothing incomplete
    want = expected(evs)
    assert len(want) == KEYS * MINUTES
    assert stored(client, name) == want


async def test_redis_emptied_while_the_step_was_down_is_rebuilt_exactly(
    kafka_broker: EmbeddedKafka, own_redis: RedisProcess
) -> None:
    """The step restarts against an empty Redis: its group has committed offsets but
    Redis has no checkpoint, so it rebuilds instead of starting at the committed offsets."""
    name = unique("lost-down")
    p = pipeline(name, [{"name": name, "partitions": PARTITIONS}], [step(name)])
    create_topics(kafka_broker, p)
    evs = events()
    half = EVENTS // 2
    bootstrap = kafka_broker.bootstrap_servers
    await produce(bootstrap, name, evs[:half], key_field="k")
    client = own_redis.client()
    config = WorkerConfig(bootstrap, own_redis.url, batch_size=500)
    first = StepRunner(p, "sums", config)
    await stop_runner(
        first, *await run_until(first, lambda: processed(client, name) == half, "half")
    )
    own_redis.kill_9()
    own_redis.start()
    await produce(bootstrap, name, evs[half:], key_field="k")
    second = StepRunner(p, "sums", config)
    stop, task = await run_until(second, lambda: processed(client, name) == EVENTS, "all")
    try:
        await wait_for(lambda: second.ready()[0], "ready after the rebuild", task)
    finally:
        await stop_runner(second, stop, task)
    assert counter_value(second, "state_rebuilds") == PARTITIONS
    assert stored(client, name) == expected(evs)


@pytest.mark.parametrize(
    "own_redis",
    [
        ("--appendonly", "yes", "--appendfsync", "always"),
        ("--appendonly", "yes", "--appendfsync", "everysec"),
    ],
    indirect=True,
    ids=["aof-always", "aof-everysec"],
)
async def test_redis_with_aof_killed_mid_stream_resumes_exactly(
    kafka_broker: EmbeddedKafka, own_redis: RedisProcess
) -> None:
    """kill -9 while batches are being written, restart on the same AOF: whatever Redis
    kept, it kept each batch's data together with its checkpoint (one script), so the
    step continues from that checkpoint and every window is exact. With everysec up to
    a second of batches is replayed from Kafka; with always none is."""
    name = unique("aof")
    p = pipeline(name, [{"name": name, "partitions": PARTITIONS}], [step(name)])
    create_topics(kafka_broker, p)
    evs = events()
    bootstrap = kafka_broker.bootstrap_servers
    await produce(bootstrap, name, evs, key_field="k")
    client = own_redis.client()
    runner = StepRunner(p, "sums", WorkerConfig(bootstrap, own_redis.url, batch_size=200))
    stop, task = await run_until(runner, lambda: processed(client, name) > EVENTS // 3, "a third")
    try:
        own_redis.kill_9()
        await asyncio.sleep(0.5)
        own_redis.start()
        kept = processed(client, name)
        assert 0 < kept < EVENTS
        await wait_for(lambda: processed(client, name) == EVENTS, "all events", task)
    finally:
        await stop_runner(runner, stop, task)
    assert counter_value(runner, "state_rebuilds") == 0
    assert stored(client, name) == expected(evs)
