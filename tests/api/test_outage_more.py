"""Redis misbehaving without going away (issue #15): paused (SIGSTOP), busy in a long
script (BUSY), a replica whose primary is gone (MASTERDOWN), full (maxmemory). While it
cannot answer, every data route, fast path and FastAPI alike, answers 503 with
Retry-After within a bound set by --redis-timeout; afterwards the same process serves the
exact values again. Reads on a replica are served (the API never writes, so READONLY
cannot happen) and a full Redis still serves reads (OOM refuses only writes; the API's
Lua scripts read only, and Redis 7 runs a script without flags until it tries to write).

Each test uses a Redis of this module's own, filled by the real worker steps, so the
session's Redis is never paused or reconfigured under other tests."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK, free_port
from flowmill.local.redis import EmbeddedRedis
from flowmill_api.versions import MAX_AGE_S
from tests.api.harness import (
    REGIONS,
    ApiServer,
    Served,
    assert_window,
    expected_windows,
    fill,
    latest_by_vehicle,
    serve,
)
from tests.api.test_outage import data_paths
from tests.harness.waiting import wait_for

REDIS_TIMEOUT = 1.0
BOUND = 3 * REDIS_TIMEOUT + 1.0
"""The slowest acceptable 503: the pool notices an unanswered command within the timeout
(checked every half second), and a route may first wait for a connection of its own."""


@pytest.fixture(scope="module")
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def own_served(kafka_broker: EmbeddedKafka, own_redis: EmbeddedRedis) -> Served:
    return asyncio.run(fill(kafka_broker, own_redis.url, "more"))


@pytest.fixture(scope="module")
def own_api(own_served: Served) -> Iterator[ApiServer]:
    with serve(
        [own_served.pipeline], own_served.redis_url, redis_timeout_seconds=REDIS_TIMEOUT
    ) as server:
        yield server


async def all_unavailable(client: httpx.AsyncClient, served: Served, reason: str) -> None:
    """Every data route at once: each a 503 with Retry-After naming `reason` (the error's
    class; the API logs Redis' own message), within BOUND."""

    async def one(path: str) -> tuple[str, httpx.Response, float]:
        started = time.monotonic()
        r = await client.get(path)
        return path, r, time.monotonic() - started

    for path, r, took in await asyncio.gather(*(one(p) for p in data_paths(served))):
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert int(r.headers["retry-after"]) >= 1, path
        assert r.json()["error"] == "redis_unavailable", (path, r.text)
        assert reason in r.json()["detail"], (path, r.json()["detail"])
        assert took < BOUND, f"{path} took {took:.1f}s (bound {BOUND:.1f}s)"


async def all_exact(client: httpx.AsyncClient, served: Served) -> None:
    """The values the workers wrote, computed from their events, on both paths."""
    want = expected_windows(served.trips)
    for region in REGIONS:
        newest = max(s for r, s in want if r == region)
        for suffix in ("", "?via=route"):
            r = await client.get(f"{served.base('regions')}/keys/{region}/windows/current{suffix}")
            assert r.status_code == 200, (region, suffix, r.text)
            assert r.json()["start"] == newest
            assert_window(r.json()["values"], want[(region, newest)])
    top = await client.get(f"{served.base('regions')}/windows/current/top?by=trips&n=4")
    assert top.status_code == 200, top.text
    current = max(s for _, s in want)
    assert {k["key"]: k["values"]["trips"] for k in top.json()["keys"]} == {
        r: v["trips"] for (r, s), v in want.items() if s == current
    }
    latest = latest_by_vehicle(served.vehicles)
    for vehicle in ("v000", "v029"):
        r = await client.get(f"{served.base('vehicles')}/entries/{vehicle}")
        assert r.status_code == 200 and r.json()["value"] == latest[vehicle], r.text


async def ready_again(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 15
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "not ready within 15 s of Redis answering again"
        await asyncio.sleep(0.1)


async def test_redis_paused_is_a_prompt_503_then_exact(
    own_api: ApiServer, own_served: Served, own_redis: EmbeddedRedis
) -> None:
    with own_redis.client() as admin:
        pid = int(admin.info("server")["process_id"])
    async with httpx.AsyncClient(base_url=own_api.url, timeout=30) as client:
        await all_exact(client, own_served)
        os.kill(pid, signal.SIGSTOP)
        try:
            await outlive_the_cache()
            await all_unavailable(client, own_served, "TimeoutError")
            started = time.monotonic()
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "retry-after" in ready.headers
            assert time.monotonic() - started < BOUND
            assert (await client.get("/healthz")).status_code == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        await ready_again(client)
        await all_exact(client, own_served)


async def outlive_the_cache() -> None:
    """Answers all_exact just read may be served from the API's memory for up to
    MAX_AGE_S (a Redis that answers nothing announces no write either); after that every
    read meets the outage."""
    await asyncio.sleep(MAX_AGE_S)


def busy_script(url: str, errors: list[BaseException]) -> None:
    """A script that never ends, until SCRIPT KILL (it never writes, so it may be killed)."""
    with redis.Redis.from_url(url) as client:
        try:
            client.eval("while true do end", 0)
        except redis.ResponseError as err:  # "Script killed by user with SCRIPT KILL..."
            errors.append(err)


async def test_a_busy_script_is_a_503_then_exact(
    own_api: ApiServer,
    own_served: Served,
    own_redis: EmbeddedRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = own_redis.client(socket_timeout=5)
    admin.config_set("busy-reply-threshold", 50)
    errors: list[BaseException] = []
    script = threading.Thread(target=busy_script, args=(own_redis.url, errors), daemon=True)
    script.start()

    def busy() -> bool:
        try:
            admin.ping()
        except redis.ResponseError as err:
            return str(err).startswith("BUSY")
        return False

    try:
        wait_for(busy, 10, "Redis answering BUSY")
        async with httpx.AsyncClient(base_url=own_api.url, timeout=30) as client:
            await outlive_the_cache()
            await all_unavailable(client, own_served, "ResponseError")
            assert "BUSY Redis is busy running a script" in caplog.text  # the API's log
            ready = await client.get("/readyz")
            assert ready.status_code == 503, ready.text
            admin.script_kill()
            script.join(10)
            assert errors and "killed" in str(errors[0]).lower(), errors
            await ready_again(client)
            await all_exact(client, own_served)
    finally:
        if script.is_alive():
            admin.script_kill()
            script.join(10)
        admin.config_set("busy-reply-threshold", 5000)
        admin.close()


async def test_a_full_redis_still_serves_reads(
    own_api: ApiServer, own_served: Served, own_redis: EmbeddedRedis
) -> None:
    admin = own_redis.client()
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # below what it holds: every write is refused
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
            admin.set("probe", "x")
        async with httpx.AsyncClient(base_url=own_api.url, timeout=30) as client:
            await all_exact(client, own_served)
            assert (await client.get("/readyz")).status_code == 200
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


async def test_a_replica_serves_reads_and_masterdown_is_a_503(
    own_served: Served, own_redis: EmbeddedRedis
) -> None:
    with EmbeddedRedis() as replica, replica.client() as admin:
        admin.replicaof(LOOPBACK, own_redis.port)
        with own_redis.client() as primary:
            keys = primary.dbsize()
        wait_for(
            lambda: (
                admin.info("replication")["master_link_status"] == "up" and admin.dbsize() == keys
            ),
            15,
            "the replica in sync",
        )
        with serve([own_served.pipeline], replica.url, redis_timeout_seconds=REDIS_TIMEOUT) as api:
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
                await all_exact(client, own_served)
                # Its primary gone, a replica told not to serve stale data refuses reads.
                admin.config_set("replica-serve-stale-data", "no")
                admin.replicaof(LOOPBACK, free_port())
                wait_for(
                    lambda: admin.info("replication")["master_link_status"] == "down",
                    10,
                    "the replica's link down",
                )
                await outlive_the_cache()
                await all_unavailable(client, own_served, "MasterDownError")
                admin.replicaof("NO", "ONE")
                await all_exact(client, own_served)
