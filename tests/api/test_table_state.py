"""A table whose Redis state was lost says so: while a step rebuilds it from Kafka, or when
Kafka no longer held what it needed, every table response carries `state` and the
X-Flowmill-Table-State header, on the fast path and the FastAPI routes alike, and the
catalog shows each table's status; a window aggregate the worker could not store is
served with its reason instead of as a value."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis

from flowmill_workers.sinks.redis_tables import status_key
from tests.api.harness import MINUTE, Served, iso
from tests.harness.waiting import wait_for

HEADER = "x-flowmill-table-state"


def fast_and_routed(served: Served, start: int) -> dict[str, list[str]]:
    """Table paths by kind: the fast path answers the first ones of each, FastAPI the rest."""
    regions, vehicles = served.base("regions"), served.base("vehicles")
    return {
        "regions": [
            f"{regions}/keys/north/windows/current",  # fast path
            f"{regions}/keys/north/windows/latest",  # fast path
            f"{regions}/windows/current/top",  # fast path
            f"{regions}/keys/north/windows/latest?n=2&final=true",
            f"{regions}/keys/north/windows",
            f"{regions}/keys/north/windows/{start}",
            f"{regions}/windows",
            f"{regions}/windows/{start}/top?by=revenue",
            f"{regions}/keys",
        ],
        "vehicles": [
            f"{vehicles}/entries/v000",  # fast path
            f"{vehicles}/entries",
            f"{vehicles}/within?min_lat=40&min_lon=-75&max_lat=41&max_lon=-73",
        ],
    }


@pytest.fixture
def client(served: Served) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(served.redis_url, decode_responses=True) as c:
        yield c
        # The module's other tests read these tables: leave them exact.
        c.delete(status_key(served.name, "regions"), status_key(served.name, "vehicles"))


def settled(http: httpx.Client, path: str, want: str) -> httpx.Response:
    """The response to `path` once its header says `want` (the API caches a table's status
    for up to a second)."""

    def probe() -> httpx.Response | None:
        r = http.get(path)
        assert r.status_code == 200, (path, r.text)
        return r if r.headers[HEADER] == want else None

    return wait_for(probe, 10, f"{path} answered as {want}")


def oldest_start(http: httpx.Client, served: Served) -> int:
    body = http.get(f"{served.base('regions')}/keys/north/windows", params={"limit": 1}).json()
    start: int = body["windows"][0]["start"]
    return start


def catalog_statuses(http: httpx.Client) -> dict[str, tuple[str, Any]]:
    (pipeline,) = http.get("/pipelines").json()["pipelines"]
    return {t["name"]: (t["status"], t.get("state")) for t in pipeline["tables"]}


def test_exact_tables_say_exact_and_carry_no_state(http: httpx.Client, served: Served) -> None:
    for paths in fast_and_routed(served, oldest_start(http, served)).values():
        for path in paths:
            r = http.get(path)
            assert r.status_code == 200, (path, r.text)
            assert r.headers[HEADER] == "exact", path
            assert "state" not in r.json(), path
    assert {s for s, _ in catalog_statuses(http).values()} == {"exact"}
    assert http.get(served.base("regions")).json()["status"] == "exact"


def test_rebuilding_and_incomplete_tables_say_so_on_every_path(
    http: httpx.Client, served: Served, client: redis.Redis
) -> None:
    trips, vehicles = served.trips_topic, served.vehicles_topic
    # As the worker writes them when it finds a partition's Redis state lost (the offset
    # to reach as decimal text; what Kafka no longer held as JSON).
    client.hset(
        status_key(served.name, "regions"),
        mapping={f"rebuilding:{trips}:1": "612", f"rebuilding:{trips}:0": "588"},
    )
    client.hset(
        status_key(served.name, "vehicles"),
        mapping={
            f"rebuilding:{vehicles}:1": "45",
            f"incomplete:{vehicles}:1": orjson.dumps(
                {"missing_before_offset": 30, "detected_ms": 1_763_800_123_456}
            ).decode(),
        },
    )
    rebuilding = {
        "rebuilding": [
            {"topic": trips, "partition": 0, "until_offset": 588},
            {"topic": trips, "partition": 1, "until_offset": 612},
        ],
        "incomplete": [],
    }
    incomplete = {
        "rebuilding": [{"topic": vehicles, "partition": 1, "until_offset": 45}],
        "incomplete": [
            {
                "topic": vehicles,
                "partition": 1,
                "missing_before_offset": 30,
                "detected_ms": 1_763_800_123_456,
            }
        ],
    }
    paths = fast_and_routed(served, oldest_start(http, served))
    for table, want, state in (
        ("regions", "rebuilding", rebuilding),
        ("vehicles", "incomplete", incomplete),
    ):
        settled(http, paths[table][0], want)
        for path in paths[table]:
            r = http.get(path)
            assert r.headers[HEADER] == want, path
            assert r.json()["state"] == state, path

    catalog = catalog_statuses(http)
    assert catalog == {
        "regions": ("rebuilding", rebuilding),
        "hops": ("exact", None),
        "vehicles": ("incomplete", incomplete),
        "speeds": ("exact", None),
    }
    table = http.get(served.base("vehicles")).json()
    assert (table["status"], table["state"]) == ("incomplete", incomplete)

    # The rebuild caught up (the worker deletes its field): exact again.
    client.delete(status_key(served.name, "regions"))
    r = settled(http, paths["regions"][0], "exact")
    assert "state" not in r.json()
    assert catalog_statuses(http)["regions"] == ("exact", None)


def test_an_overflowed_window_is_served_with_its_reason(http: httpx.Client, served: Served) -> None:
    """The real worker marks the window (two fares of 1.5e308 overflow its sum and mean);
    the API serves the marked aggregates as errors and the others as values."""
    start = max(int(w["start"]) for w in _all_windows(http, served)) + 10 * MINUTE
    huge = [
        {
            "trip_id": f"huge-{i}",
            "region_id": "north",
            "rider": f"h{i}",
            "fare": 1.5e308,
            "event_time": iso(start + i * 1000),
        }
        for i in range(2)
    ]
    asyncio.run(served.add_trips(huge, ("by-region",)))
    errors = {
        "revenue": "overflow: the sum is beyond the range of a double",
        "avg_fare": "overflow: the avg is beyond the range of a double",
    }
    want = {
        "trips": 2,
        "revenue": None,
        "avg_fare": None,
        "min_fare": 1.5e308,
        "max_fare": 1.5e308,
        "riders": 2,
    }
    base = f"{served.base('regions')}/keys/north/windows"
    current = http.get(f"{base}/current").json()  # fast path
    routed = http.get(f"{base}/{start}").json()  # FastAPI
    for body in (current, routed):
        assert body["start"] == start
        assert body["values"] == want
        assert body["errors"] == errors
    # Windows without a marker carry no errors.
    older = http.get(base, params={"to": start - 1}).json()["windows"]
    assert older and all("errors" not in w for w in older)
    top = http.get(f"{served.base('regions')}/windows/{start}/top", params={"by": "trips"}).json()
    assert [(k["key"], k["values"], k["errors"]) for k in top["keys"]] == [("north", want, errors)]


def _all_windows(http: httpx.Client, served: Served) -> list[dict[str, Any]]:
    body = http.get(f"{served.base('regions')}/windows", params={"limit": 1000}).json()
    windows: list[dict[str, Any]] = body["windows"]
    return windows
