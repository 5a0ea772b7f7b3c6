"""Live updates over SSE and WebSocket, fed by a real worker publishing as it writes;
resuming from an event id re-sends what was missed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import websockets

from tests.api.harness import (
    MINUTE,
    REGIONS,
    ApiServer,
    Served,
    collect,
    expected_windows,
    latest_by_vehicle,
    sse_events,
    trips,
    vehicles,
)

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % MINUTE


def position(event_id: str) -> int:
    return int(event_id.split("-")[0])


def updates(events: list[tuple[str, str | None, Any]]) -> list[dict[str, Any]]:
    return [data for name, _, data in events if name == "update"]


def covers(start: int, keys: set[str], want: dict[tuple[str, int], Any] | None = None) -> Any:
    """until(): every key has an update of the window starting at `start` (with the
    expected count, when given: a worker publishes a window once per partition batch, so
    the first update may be partial)."""

    def done(events: list[tuple[str, str | None, Any]]) -> bool:
        last = {u["key"]: u for u in updates(events) if u["window"]["start"] == start}
        if not keys <= set(last):
            return False
        return want is None or all(
            last[k]["values"]["trips"] == want[(k, start)]["trips"] for k in keys
        )

    return done


async def test_sse_window_updates_and_resume(api: ApiServer, served: Served) -> None:
    url = f"{api.url}{served.base('regions')}/events"
    new_start = BASE_MS + 6 * MINUTE
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = sse_events(response)
        ready = await collect(stream, lambda ev: ev[-1][0] == "ready")
        assert ready[-1][2]["table"] == "regions"
        new = trips(400, seed=21, start_ms=new_start, minutes=1)
        want = expected_windows(served.trips + new)
        reader = asyncio.create_task(collect(stream, covers(new_start, set(REGIONS), want)))
        await served.add_trips(new, ("by-region",))
        events = await reader
    got = updates(events)
    assert all(not u["replay"] for u in got)
    ids = [u["id"] for u in got]
    assert [position(i) for i in ids] == sorted(position(i) for i in ids)
    assert len(set(ids)) == len(ids)

    final = {u["key"]: u for u in got if u["window"]["start"] == new_start}
    assert set(final) == set(REGIONS)
    for region, u in final.items():
        assert u["window"] == {"start": new_start, "end": new_start + MINUTE}
        assert u["values"]["trips"] == want[(region, new_start)]["trips"]
        assert abs(u["values"]["revenue"] - want[(region, new_start)]["revenue"]) < 1e-6

    # Disconnected, the client misses a whole new window; resuming from its last id
    # re-sends it (marked replay), with the values REST serves.
    later = new_start + MINUTE
    await served.add_trips(trips(200, seed=22, start_ms=later, minutes=1), ("by-region",))
    want = expected_windows(served.trips)
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        async with client.stream("GET", url, headers={"Last-Event-ID": ids[-1]}) as response:
            replayed = await collect(sse_events(response), covers(later, set(REGIONS), want))
        for u in updates(replayed):
            assert u["replay"] is True
            assert u["window"]["start"] >= new_start  # one window size before the last seen
            rest = await client.get(
                f"{served.base('regions')}/keys/{u['key']}/windows/{u['window']['start']}"
            )
            assert rest.json()["values"] == u["values"]


async def test_sse_key_filter(api: ApiServer, served: Served) -> None:
    url = f"{api.url}{served.base('regions')}/events?key=south"
    start = BASE_MS + 10 * MINUTE
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url) as response:
        stream = sse_events(response)
        await collect(stream, lambda ev: ev[-1][0] == "ready")
        reader = asyncio.create_task(collect(stream, covers(start, {"south"})))
        await served.add_trips(trips(300, seed=23, start_ms=start, minutes=1), ("by-region",))
        events = await reader
    assert {u["key"] for u in updates(events)} == {"south"}


async def test_websocket_updates(api: ApiServer, served: Served) -> None:
    ws_url = api.url.replace("http://", "ws://") + f"{served.base('regions')}/ws?key=east"
    start = BASE_MS + 12 * MINUTE
    new = trips(300, seed=24, start_ms=start, minutes=1)
    want = expected_windows(served.trips + new)[("east", start)]
    async with websockets.connect(ws_url) as ws:
        assert orjson.loads(await ws.recv())["type"] == "ready"
        feeding = asyncio.create_task(served.add_trips(new, ("by-region",)))
        received: list[dict[str, Any]] = []
        # A window is published once per partition batch: wait for its full value.
        while not any(
            m["window"]["start"] == start and m["values"]["trips"] == want["trips"]
            for m in received
        ):
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "update":
                received.append(message)
        await feeding
    assert {m["key"] for m in received} == {"east"}
    async with httpx.AsyncClient(base_url=api.url) as client:
        rest = (await client.get(f"{served.base('regions')}/keys/east/windows/current")).json()
    assert rest["start"] == start and rest["values"] == received[-1]["values"]


async def test_websocket_unknown_table_closes_with_reason(api: ApiServer, served: Served) -> None:
    ws_url = api.url.replace("http://", "ws://") + f"{served.base('ghost')}/ws"
    async with websockets.connect(ws_url) as ws:
        message = orjson.loads(await ws.recv())
        assert message["type"] == "error" and message["resource"] == "table"
        await ws.wait_closed()
    assert ws.close_code == 4404


async def test_sse_latest_state_updates_and_resume(api: ApiServer, served: Served) -> None:
    url = f"{api.url}{served.base('vehicles')}/events"
    batch = vehicles(30, 1, seed=31)
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url) as response:
        stream = sse_events(response)
        await collect(stream, lambda ev: ev[-1][0] == "ready")
        keys = {v["vehicle_id"] for v in batch}
        reader = asyncio.create_task(
            collect(stream, lambda ev: keys <= {u["key"] for u in updates(ev)})
        )
        await served.add_vehicles(batch)
        events = await reader
    got = updates(events)
    latest = latest_by_vehicle(served.vehicles)
    for u in got:
        assert u["window"] is None and u["deleted"] is False
        assert u["values"] == latest[u["key"]]
    # Resuming shortly after re-sends the entries updated around the last seen event.
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", url, params={"since": got[-1]["id"]}) as response,
    ):
        replayed = await collect(
            sse_events(response), lambda ev: keys <= {u["key"] for u in updates(ev)}
        )
    assert all(u["replay"] and u["values"] == latest[u["key"]] for u in updates(replayed))


async def test_live_errors(api: ApiServer, served: Served) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        r = await client.get(f"{served.base('hops')}/events")
        assert r.status_code == 404 and "does not publish live updates" in r.json()["detail"]
        r = await client.get(f"{served.base('ghost')}/events")
        assert r.status_code == 404 and r.json()["name"] == "ghost"
        r = await client.get(f"{served.base('regions')}/events", params={"since": "x" * 100})
        assert r.status_code == 422 and r.json()["parameters"][0]["name"] == "since"
