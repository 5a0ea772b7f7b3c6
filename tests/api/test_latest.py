"""Latest-state tables: one key, all keys with paging, and bounding boxes (the vehicle
map of the Smart City seed), against the last event of each vehicle."""

from __future__ import annotations

import httpx
import pytest

from tests.api.harness import Served, latest_by_vehicle


def test_one_key_is_its_latest_event(http: httpx.Client, served: Served) -> None:
    latest = latest_by_vehicle(served.vehicles)
    for vehicle in ("v000", "v017", "v029"):
        body = http.get(f"{served.base('vehicles')}/entries/{vehicle}").json()
        assert body["key"] == vehicle
        assert body["value"] == latest[vehicle]
        assert body["value"]["round"] == 2
        assert isinstance(body["updated"], int) and body["updated"] > 1_700_000_000_000


def test_kept_fields_only(http: httpx.Client, served: Served) -> None:
    latest = latest_by_vehicle(served.vehicles)
    body = http.get(f"{served.base('speeds')}/entries/v003").json()
    assert body["value"] == {"speed": latest["v003"]["speed"]}


def test_all_keys_page_by_page(http: httpx.Client, served: Served) -> None:
    latest = latest_by_vehicle(served.vehicles)
    seen: dict[str, dict[str, object]] = {}
    offset = 0
    while True:
        page = http.get(
            f"{served.base('vehicles')}/entries", params={"offset": offset, "limit": 7}
        ).json()
        assert page["total"] == len(latest)
        if not page["entries"]:
            break
        updated = [e["updated"] for e in page["entries"]]
        assert updated == sorted(updated, reverse=True)
        for e in page["entries"]:
            seen[e["key"]] = e["value"]
        offset += 7
    assert seen == latest


def inside(e: dict[str, float], box: tuple[float, float, float, float]) -> bool:
    min_lat, min_lon, max_lat, max_lon = box
    return min_lat <= e["lat"] <= max_lat and min_lon <= e["lon"] <= max_lon


@pytest.mark.parametrize(
    "box",
    [
        (40.70, -74.02, 40.75, -73.97),
        (40.74, -74.00, 40.80, -73.90),
        (40.0, -75.0, 41.0, -73.0),  # everything
        (-80.0, -179.0, 80.0, 179.0),  # wider than a hemisphere: a scan
        (10.0, 10.0, 11.0, 11.0),  # nothing
    ],
)
def test_bounding_box(
    http: httpx.Client, served: Served, box: tuple[float, float, float, float]
) -> None:
    latest = latest_by_vehicle(served.vehicles)
    # Redis stores positions to ~0.6 m: keep the reference away from the edges.
    margin = 1e-5
    clearly_in = {k for k, e in latest.items() if inside(e, _shrink(box, margin))}
    maybe_in = {k for k, e in latest.items() if inside(e, _shrink(box, -margin))}
    min_lat, min_lon, max_lat, max_lon = box
    body = http.get(
        f"{served.base('vehicles')}/within",
        params={"min_lat": min_lat, "min_lon": min_lon, "max_lat": max_lat, "max_lon": max_lon},
    ).json()
    found = {e["key"] for e in body["entries"]}
    assert clearly_in <= found <= maybe_in
    assert body["matched"] == len(found) and body["truncated"] is False
    for e in body["entries"]:
        assert e["value"] == latest[e["key"]]
        assert e["lat"] == pytest.approx(latest[e["key"]]["lat"], abs=1e-5)
        assert e["lon"] == pytest.approx(latest[e["key"]]["lon"], abs=1e-5)


def _shrink(box: tuple[float, float, float, float], by: float) -> tuple[float, float, float, float]:
    return box[0] + by, box[1] + by, box[2] - by, box[3] - by


def test_bounding_box_limit_keeps_the_nearest_to_the_centre(
    http: httpx.Client, served: Served
) -> None:
    body = http.get(
        f"{served.base('vehicles')}/within",
        params={"min_lat": 40.0, "min_lon": -75.0, "max_lat": 41.0, "max_lon": -73.0, "limit": 5},
    ).json()
    assert body["matched"] == 30 and body["truncated"] is True and len(body["entries"]) == 5


def test_latest_errors(http: httpx.Client, served: Served) -> None:
    base = served.base("vehicles")
    r = http.get(f"{base}/entries/v999")
    assert r.status_code == 404 and r.json()["resource"] == "key" and r.json()["name"] == "v999"

    box = {"min_lat": 40, "min_lon": -75, "max_lat": 41, "max_lon": -73}
    r = http.get(f"{served.base('regions')}/within", params=box)
    assert r.status_code == 404 and "window table, not a latest table" in r.json()["detail"]

    r = http.get(f"{served.base('speeds')}/within", params=box)
    assert r.status_code == 404 and "has no positions" in r.json()["detail"]

    for params, parameter in (
        (box | {"min_lat": 42}, "min_lat"),
        (box | {"min_lon": -72}, "min_lon"),
        (box | {"max_lat": 95}, "max_lat"),
        ({k: v for k, v in box.items() if k != "max_lon"}, "max_lon"),
        (box | {"limit": 0}, "limit"),
    ):
        r = http.get(f"{base}/within", params=params)
        assert r.status_code == 422, params
        assert [p["name"] for p in r.json()["parameters"]] == [parameter]
    r = http.get(f"{base}/entries", params={"limit": 5000})
    assert r.status_code == 422 and r.json()["parameters"][0]["name"] == "limit"
