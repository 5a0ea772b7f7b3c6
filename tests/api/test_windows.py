"""Window tables: a key's current window, latest N, time ranges, one window, the table's
windows and keys, top-N by each aggregate, against values computed from the events."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from flowmill_api import ApiSettings, create_app
from flowmill_api.app import FlowmillApp
from flowmill_api.fastpath import FastPath
from tests.api.harness import (
    MINUTE,
    REGIONS,
    ApiServer,
    Served,
    assert_window,
    expected_windows,
)

ORIGIN = "http://dashboard.example.test"
HOST = {"Host": "api.example.test"}
"""One Host for both servers, so a redirect's Location is the same."""


def starts_of(served: Served, region: str) -> list[int]:
    return sorted(s for r, s in expected_windows(served.trips) if r == region)


@pytest.mark.parametrize("region", REGIONS)
def test_current_window_of_a_key(http: httpx.Client, served: Served, region: str) -> None:
    expected = expected_windows(served.trips)
    newest = starts_of(served, region)[-1]
    body = http.get(f"{served.base('regions')}/keys/{region}/windows/current").json()
    assert body["key"] == region
    assert (body["start"], body["end"]) == (newest, newest + MINUTE)
    assert_window(body["values"], expected[(region, newest)])


def test_latest_n_windows_oldest_first(http: httpx.Client, served: Served) -> None:
    expected = expected_windows(served.trips)
    starts = starts_of(served, "east")
    body = http.get(f"{served.base('regions')}/keys/east/windows/latest", params={"n": 3}).json()
    assert [w["start"] for w in body["windows"]] == starts[-3:]
    for w in body["windows"]:
        assert_window(w["values"], expected[("east", w["start"])])
    everything = http.get(f"{served.base('regions')}/keys/east/windows/latest?n=1000").json()
    assert [w["start"] for w in everything["windows"]] == starts


def test_time_range_with_paging(http: httpx.Client, served: Served) -> None:
    expected = expected_windows(served.trips)
    starts = starts_of(served, "west")
    base = f"{served.base('regions')}/keys/west/windows"
    body = http.get(base, params={"from": starts[1], "to": starts[3]}).json()
    assert [w["start"] for w in body["windows"]] == starts[1:4]
    assert body["next_from"] is None
    for w in body["windows"]:
        assert_window(w["values"], expected[("west", w["start"])])

    first = http.get(base, params={"limit": 2}).json()
    assert [w["start"] for w in first["windows"]] == starts[:2]
    rest = http.get(base, params={"from": first["next_from"], "limit": 100}).json()
    assert [w["start"] for w in rest["windows"]] == starts[2:]

    empty = http.get(base, params={"from": starts[-1] + 1}).json()
    assert empty["windows"] == [] and empty["next_from"] is None


def test_one_window_by_start(http: httpx.Client, served: Served) -> None:
    expected = expected_windows(served.trips)
    start = starts_of(served, "north")[2]
    body = http.get(f"{served.base('regions')}/keys/north/windows/{start}").json()
    assert body["start"] == start
    assert_window(body["values"], expected[("north", start)])
    r = http.get(f"{served.base('regions')}/keys/north/windows/{start + 1}")
    assert r.status_code == 404
    assert r.json()["resource"] == "window" and r.json()["name"] == str(start + 1)


def test_table_windows_and_keys(http: httpx.Client, served: Served) -> None:
    all_starts = sorted({s for _, s in expected_windows(served.trips)}, reverse=True)
    body = http.get(f"{served.base('regions')}/windows").json()
    assert [w["start"] for w in body["windows"]] == all_starts
    assert all(w["end"] == w["start"] + MINUTE for w in body["windows"])
    page = http.get(f"{served.base('regions')}/windows", params={"limit": 2}).json()
    assert [w["start"] for w in page["windows"]] == all_starts[:2]
    assert page["next_to"] == all_starts[2]

    keys = http.get(f"{served.base('regions')}/keys").json()
    assert keys["total"] == 4
    assert {k["key"] for k in keys["keys"]} == set(REGIONS)
    assert all(k["latest_start"] == starts_of(served, k["key"])[-1] for k in keys["keys"])
    page = http.get(f"{served.base('regions')}/keys", params={"offset": 3, "limit": 10}).json()
    assert len(page["keys"]) == 1 and page["total"] == 4


@pytest.mark.parametrize("by", ["trips", "revenue", "avg_fare", "min_fare", "max_fare", "riders"])
def test_top_keys_of_current_window(http: httpx.Client, served: Served, by: str) -> None:
    expected = expected_windows(served.trips)
    current = max(s for _, s in expected)
    in_window = {r: v for (r, s), v in expected.items() if s == current}
    want = sorted(in_window, key=lambda r: in_window[r][by], reverse=True)
    body = http.get(
        f"{served.base('regions')}/windows/current/top", params={"by": by, "n": 3}
    ).json()
    assert (body["start"], body["end"], body["by"]) == (current, current + MINUTE, by)
    assert [k["rank"] for k in body["keys"]] == [1, 2, 3]
    scores = [k["score"] for k in body["keys"]]
    assert scores == sorted(scores, reverse=True)
    assert [in_window[k["key"]][by] for k in body["keys"]] == pytest.approx(
        [in_window[r][by] for r in want[:3]]
    )
    for k in body["keys"]:
        assert_window(k["values"], in_window[k["key"]])


def test_top_keys_of_a_past_window_ascending(http: httpx.Client, served: Served) -> None:
    expected = expected_windows(served.trips)
    start = sorted({s for _, s in expected})[1]
    in_window = {r: v for (r, s), v in expected.items() if s == start}
    body = http.get(
        f"{served.base('regions')}/windows/{start}/top",
        params={"order": "asc", "n": 10},
    ).json()
    assert body["by"] == "trips"  # the first aggregate by default
    assert [k["score"] for k in body["keys"]] == sorted(v["trips"] for v in in_window.values())
    r = http.get(f"{served.base('regions')}/windows/{start + 5}/top")
    assert r.status_code == 404 and r.json()["resource"] == "window"


def test_hopping_windows_overlap(http: httpx.Client, served: Served) -> None:
    """A hopping table's windows start every minute and last two."""
    body = http.get(f"{served.base('hops')}/keys/north/windows/latest?n=2").json()
    a, b = body["windows"]
    assert b["start"] - a["start"] == MINUTE and b["end"] - b["start"] == 2 * MINUTE
    one_minute = expected_windows(served.trips)
    assert a["values"]["trips"] == sum(
        one_minute.get(("north", s), {"trips": 0})["trips"] for s in (a["start"], b["start"])
    )


def test_unknown_key_and_wrong_table_kind_are_404s(http: httpx.Client, served: Served) -> None:
    base = served.base("regions")
    for path in (
        f"{base}/keys/atlantis/windows/current",
        f"{base}/keys/atlantis/windows/latest",
        f"{base}/keys/atlantis/windows",
        f"{base}/keys/atlantis/windows/{starts_of(served, 'north')[0]}",
    ):
        r = http.get(path)
        assert r.status_code == 404, path
        assert r.json() | {"detail": ""} == {
            "error": "not_found",
            "resource": "key",
            "name": "atlantis",
            "detail": "",
        }
        assert "table 'regions'" in r.json()["detail"]
    r = http.get(f"{served.base('vehicles')}/keys/v001/windows/current")
    assert r.status_code == 404
    assert "latest table, not a window table" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("keys/north/windows/latest", {"n": 0}, "n"),
        ("keys/north/windows/latest", {"n": "many"}, "n"),
        ("keys/north/windows/latest", {"n": 100_000}, "n"),
        ("keys/north/windows", {"from": "yesterday"}, "from"),
        ("keys/north/windows", {"from": 5, "to": 4}, "from"),
        ("keys/north/windows", {"limit": -1}, "limit"),
        ("windows", {"to": 2**60}, "to"),
        ("windows/current/top", {"by": "nonsense"}, "by"),
        ("windows/current/top", {"order": "sideways"}, "order"),
        ("keys/north/windows/notanumber", {}, "start"),
        ("keys", {"offset": -3}, "offset"),
    ],
)
def test_bad_parameters_are_422s_naming_them(
    http: httpx.Client, served: Served, path: str, params: dict[str, int | str], parameter: str
) -> None:
    r = http.get(f"{served.base('regions')}/{path}", params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_parameter"
    assert [p["name"] for p in body["parameters"]] == [parameter]
    assert f"'{parameter}'" in body["detail"]


def _exchange(
    servers: tuple[ApiServer, ApiServer], requests: list[tuple[str, dict[str, str]]]
) -> None:
    """Each request to both servers in turn: the same status, headers (but Date) in the
    same order, and body bytes."""
    with (
        httpx.Client(base_url=servers[0].url, headers=HOST) as fast,
        httpx.Client(base_url=servers[1].url, headers=HOST) as routed,
    ):
        for path, headers in requests:
            a, b = fast.get(path, headers=headers), routed.get(path, headers=headers)
            assert a.status_code == b.status_code, (path, a.text, b.text)
            assert a.content == b.content, path
            assert [h for h in a.headers.raw if h[0].lower() != b"date"] == [
                h for h in b.headers.raw if h[0].lower() != b"date"
            ], path


def _requests_counted(server: ApiServer) -> dict[tuple[str, str], float]:
    """flowmill_api_requests by route and status, from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    counted = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "flowmill_api_requests_total":
                labels = sample.labels
                if labels["route"] != "/metrics":
                    counted[(labels["route"], labels["status"])] = sample.value
    return counted


def test_fast_path_and_routes_answer_alike(served: Served) -> None:
    """The fast path in front of FastAPI (flowmill_api.fastpath) answers the hottest
    lookups as FastAPI's routes do (fast_path off): status, headers, body bytes and the
    request metrics, for hits, answers from memory, 404s and parameters it leaves to the
    routes; with API keys, a rate limit and CORS on, 401s, 429s and CORS answers too."""
    regions, vehicles = served.base("regions"), served.base("vehicles")
    plain = [
        f"{regions}/keys/north/windows/current",
        f"{regions}/keys/north/windows/latest?n=3",
        f"{regions}/keys/east/windows/latest",
        f"{regions}/windows/current/top?by=revenue&n=3",
        f"{regions}/windows/current/top?order=asc",
        f"{regions}/windows/current/top",
        f"{regions}/keys/atlantis/windows/current",
        f"{served.base('hops')}/keys/north/windows/current",
        f"{served.base('nowhere')}/keys/north/windows/current",
        "/pipelines/nowhere/tables/regions/keys/north/windows/current",
        f"{vehicles}/entries/v004",
        f"{vehicles}/entries/v999",
        f"{served.base('speeds')}/entries/v004",
        f"{regions}/entries/north",
        f"{vehicles}/keys/v004/windows/current",
    ]
    left_to_routes = [
        f"{regions}/keys/north/windows/latest?n=0",
        f"{regions}/keys/north/windows/latest?n=x",
        f"{regions}/windows/current/top?order=up",
        f"{regions}/keys/north/windows/current?via=route",
        f"{regions}/keys/north/windows/current/",
    ]
    fell_through: list[str] = []

    def counting(app: FlowmillApp) -> FlowmillApp:
        assert isinstance(app.front, FastPath)
        behind = app.front.app

        async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] != "/metrics":
                fell_through.append(scope["path"] + "?" + scope["query_string"].decode())
            await behind(scope, receive, send)

        app.front.app = recorded
        return app

    def pair(**settings: Any) -> tuple[ApiServer, ApiServer]:
        pipelines, url = [served.pipeline], served.redis_url
        fast = create_app(pipelines, url, ApiSettings(**settings))
        assert isinstance(fast, FlowmillApp)
        routed = create_app(pipelines, url, ApiSettings(fast_path=False, **settings))
        return ApiServer(counting(fast)), ApiServer(routed)

    servers = pair()
    with servers[0], servers[1]:
        # twice: the second answers come from memory on the fast path
        _exchange(servers, [(p, {}) for p in plain + left_to_routes + plain])
        assert _requests_counted(servers[0]) == _requests_counted(servers[1])
    assert sorted(fell_through) == sorted(p if "?" in p else p + "?" for p in left_to_routes)

    fell_through.clear()
    key = {"X-API-Key": "k1"}
    secured = pair(
        api_keys=frozenset({"k1"}), rate_limit=0.001, rate_burst=12, cors_origins=(ORIGIN,)
    )
    with secured[0], secured[1]:
        requests = [(p, key) for p in plain[:6]] + [(plain[0], {}), (plain[0], {"X-API-Key": "k2"})]
        requests += [(plain[0], {**key, "Origin": ORIGIN}), (plain[1], {**key, "Origin": "x"})]
        requests += [(p, key) for p in plain[:6]]  # 14 taken of a burst of 12: 429s
        _exchange(secured, requests)
        assert _requests_counted(secured[0]) == _requests_counted(secured[1])
        assert _requests_counted(secured[0])[("<unmatched>", "429")] == 2
    assert len(fell_through) == 2  # the CORS requests
