"""One reading of numeric parameters on both paths: the fast path and the FastAPI routes
accept the same texts (ASCII digits, an optional minus, within bounds) and refuse every
other one with the same 422 naming the parameter, never a 500."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmill_api.params import PAGE, Bounds, parse_integer
from tests.api.harness import Served

NOT_INTEGERS = [
    "²",  # str.isdigit() is True, int() refuses it
    "①",
    "\u0661\u0662",  # Arabic-Indic digits: int() reads 12
    "\uff11\uff10",  # fullwidth digits
    "",
    " 5",
    "5 ",
    "+5",
    "5.0",
    "1_0",
    "0x10",
    "1e3",
    "--1",
    "-",
    "ten",
]
OUT_OF_BOUNDS = ["0", "-1", "-0", "1001", "9" * 30, "9" * 5000]
FAST_ROUTES = ["keys/north/windows/latest", "windows/current/top"]


def test_parse_integer_reads_ascii_digits_only() -> None:
    assert parse_integer("0010") == 10
    assert parse_integer("-42") == -42
    assert parse_integer("9" * 19) == int("9" * 19)
    for text in NOT_INTEGERS:
        with pytest.raises(ValueError, match="ASCII digits"):
            parse_integer(text)
    with pytest.raises(ValueError, match="out of range"):
        parse_integer("9" * 20)
    with pytest.raises(ValueError, match="out of range"):
        parse_integer("9" * 5000)


def test_bounds_accept_what_the_routes_accept() -> None:
    assert [PAGE.accept(t) for t in ("1", "1000", "0007")] == [1, 1000, 7]
    assert [PAGE.accept(t) for t in ("0", "1001", "²", "")] == [None] * 4
    assert Bounds(-5, 5).accept("-5") == -5


def _both(http: httpx.Client, url: str, n: str) -> tuple[httpx.Response, httpx.Response]:
    """The answer of the fast path (a plain query) and of the route (an extra parameter
    the fast path does not know sends it there)."""
    return http.get(url, params={"n": n}), http.get(url, params={"n": n, "via": "route"})


@pytest.mark.parametrize("path", FAST_ROUTES)
@pytest.mark.parametrize("n", NOT_INTEGERS + OUT_OF_BOUNDS)
def test_a_bad_count_is_the_same_422_on_both_paths(
    http: httpx.Client, served: Served, path: str, n: str
) -> None:
    fast, routed = _both(http, f"{served.base('regions')}/{path}", n)
    assert fast.status_code == 422, fast.text
    body = fast.json()
    assert body["error"] == "invalid_parameter"
    assert [p["name"] for p in body["parameters"]] == ["n"]
    assert "'n'" in body["detail"]
    assert (routed.status_code, routed.json()) == (422, body)


@pytest.mark.parametrize("path", FAST_ROUTES)
def test_a_good_count_is_the_same_answer_on_both_paths(
    http: httpx.Client, served: Served, path: str
) -> None:
    url = f"{served.base('regions')}/{path}"
    for n in ("1", "0002", "1000"):
        fast, routed = _both(http, url, n)
        assert fast.status_code == 200, (n, fast.text)
        assert fast.json() == routed.json(), n
    padded, plain = http.get(url, params={"n": "0003"}), http.get(url, params={"n": "3"})
    assert padded.json() == plain.json()


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("keys", {"limit": "\u0661\u0660"}, "limit"),
        ("keys", {"offset": "²"}, "offset"),
        ("keys", {"offset": "1000000001"}, "offset"),
        ("keys/north/windows", {"from": "①"}, "from"),
        ("keys/north/windows", {"to": "+5"}, "to"),
        ("keys/north/windows", {"to": "9" * 5000}, "to"),
        ("windows", {"limit": ""}, "limit"),
        ("keys/north/windows/\u0661\u0662", {}, "start"),
        ("windows/²/top", {}, "start"),
    ],
)
def test_every_integer_parameter_reads_ascii_digits_only(
    http: httpx.Client, served: Served, path: str, params: dict[str, str], parameter: str
) -> None:
    r = http.get(f"{served.base('regions')}/{path}", params=params)
    assert r.status_code == 422, r.text
    assert [p["name"] for p in r.json()["parameters"]] == [parameter]


def test_a_non_ascii_geo_limit_is_a_422(http: httpx.Client, served: Served) -> None:
    box = {"min_lat": 40, "min_lon": -75, "max_lat": 41, "max_lon": -73, "limit": "\u0665"}
    r = http.get(f"{served.base('vehicles')}/within", params=box)
    assert r.status_code == 422 and [p["name"] for p in r.json()["parameters"]] == ["limit"]


@given(n=st.text(st.characters(exclude_categories=["Cs"]), max_size=25))
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_any_count_text_gets_one_answer_on_both_paths(
    http: httpx.Client, served: Served, n: str
) -> None:
    fast, routed = _both(http, f"{served.base('regions')}/keys/north/windows/latest", n)
    assert fast.status_code in (200, 422), (n, fast.text)
    assert (fast.status_code, fast.json()) == (routed.status_code, routed.json()), n
    if fast.status_code == 200:
        assert PAGE.accept(n) is not None
