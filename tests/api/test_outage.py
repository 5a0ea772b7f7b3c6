"""Redis down or still loading its data: data routes answer 503 with Retry-After (the fast
path and the FastAPI routes alike), /readyz fails, /healthz and the catalog keep
answering; Redis back: the same process serves again (including live streams opened
before the outage) without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from flowmill.local.redis import EmbeddedRedis
from tests.api.harness import (
    MINUTE,
    REGIONS,
    ApiServer,
    Served,
    assert_window,
    collect,
    expected_windows,
    loading_redis,
    serve,
    sse_events,
    trips,
)

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % MINUTE


def data_paths(served: Served) -> list[str]:
    """A request of every data route; the plain forms of the hot routes are answered by
    the fast path, so each is also asked with a parameter that sends it to the route."""
    base = served.base("regions")
    hot = [
        f"{base}/keys/north/windows/current",
        f"{base}/keys/north/windows/latest",
        f"{base}/windows/current/top",
        f"{served.base('vehicles')}/entries/v001",
    ]
    return [
        *hot,
        *(f"{path}?via=route" for path in hot),
        f"{base}/keys/north/windows",
        f"{base}/windows",
        f"{base}/keys",
        f"{served.base('vehicles')}/entries",
        f"{served.base('vehicles')}/within?min_lat=40&min_lon=-75&max_lat=41&max_lon=-73",
    ]


def test_redis_loading_its_data_is_a_503(served: Served, tmp_path: Path) -> None:
    # Robust on a loaded machine: loading lasts about a minute (the test needs a few
    # seconds of it), and a loading Redis slow to reply is still waited for long enough
    # to say LOADING (the 2 s default timeout turned such replies into TimeoutError).
    with (
        loading_redis(tmp_path, keys=60_000) as url,
        serve([served.pipeline], url, redis_timeout_seconds=15) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        for path in data_paths(served):
            r = client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "redis_unavailable"
            assert "BusyLoadingError" in r.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "retry-after" in ready.headers
        assert "BusyLoadingError" in ready.json()["checks"]["redis"]["detail"]
        assert client.get("/healthz").status_code == 200


async def test_redis_outage_and_recovery(
    api: ApiServer, served: Served, redis_server: EmbeddedRedis
) -> None:
    base = served.base("regions")
    paths = [*data_paths(served), f"{base}/events"]
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        assert (await client.get(paths[0])).status_code == 200
        async with client.stream("GET", f"{base}/events") as live:
            stream = sse_events(live)
            await collect(stream, lambda ev: ev[-1][0] == "ready")

            redis_server.stop()
            try:
                for path in paths:
                    r = await client.get(path)
                    assert r.status_code == 503, (path, r.text)
                    assert int(r.headers["retry-after"]) >= 1
                    assert r.json()["error"] == "redis_unavailable"
                ready = await client.get("/readyz")
                assert ready.status_code == 503 and "retry-after" in ready.headers
                assert ready.json()["checks"]["redis"]["ok"] is False
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/pipelines")).status_code == 200
                # A 404 needs no Redis: it still names what is missing.
                assert (
                    await client.get(f"/pipelines/{served.name}/tables/x/keys")
                ).status_code == 404
            finally:
                redis_server.start()

            started = time.monotonic()
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() - started < 10, "not ready after Redis came back"
                await asyncio.sleep(0.1)
            # The restarted Redis is empty (no persistence): a 404, not a 503.
            r = await client.get(paths[0])
            assert r.status_code == 404 and r.json()["resource"] == "key"

            # The worker refills it; the same API process serves the new values, and the
            # live stream opened before the outage carries them.
            start = BASE_MS + 20 * MINUTE
            new = trips(300, seed=41, start_ms=start, minutes=1)
            want = expected_windows(new)

            def complete(events: list[tuple[str, str | None, dict[str, object]]]) -> bool:
                last = {
                    d["key"]: d
                    for name, _, d in events
                    if name == "update" and d["window"]["start"] == start  # type: ignore[index]
                }
                return set(last) == set(REGIONS) and all(
                    last[r]["values"]["trips"] == want[(r, start)]["trips"]  # type: ignore[index]
                    for r in REGIONS
                )

            reader = asyncio.create_task(collect(stream, complete, timeout=30))
            await served.add_trips(new, ("by-region",))
            await reader

        for region in REGIONS:
            body = (await client.get(f"{base}/keys/{region}/windows/current")).json()
            assert body["start"] == start
            assert_window(body["values"], want[(region, start)])
