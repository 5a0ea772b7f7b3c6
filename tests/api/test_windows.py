"""Window tables: a key's current window, latest N, time ranges, one window, the table's
windows and keys, top-N by each aggregate, against values computed from the events."""

from __future__ import annotations

import httpx
import pytest

from tests.api.harness import MINUTE, REGIONS, Served, assert_window, expected_windows


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


def test_fast_path_and_routes_answer_alike(http: httpx.Client, served: Served) -> None:
    """The hottest routes are answered by flowmill_api.fastpath when their query is plain;
    an extra parameter sends the same request through the FastAPI route instead."""
    base = served.base("regions")
    for path in (
        f"{base}/keys/north/windows/current",
        f"{base}/keys/north/windows/latest?n=3",
        f"{base}/windows/current/top?by=revenue&n=3",
        f"{base}/keys/atlantis/windows/current",
        f"{served.base('vehicles')}/entries/v004",
        f"{served.base('vehicles')}/entries/v999",
    ):
        fast = http.get(path)
        routed = http.get(path + ("&" if "?" in path else "?") + "via=route")
        assert fast.status_code == routed.status_code, path
        assert fast.json() == routed.json(), path
        assert fast.headers["content-type"] == routed.headers["content-type"]
