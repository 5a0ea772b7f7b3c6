"""API keys, the per-client rate limit and CORS: off by default, on when configured."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from flowmill.local.redis import EmbeddedRedis
from flowmill.manifest import parse_pipeline
from flowmill.settings import ENV_PREFIX
from flowmill_api import ApiSettings
from tests.api.harness import ApiServer, build_pipeline, serve

ORIGIN = "http://dashboard.example.test"


@pytest.fixture(scope="module")
def secured(redis_server: EmbeddedRedis) -> Iterator[tuple[ApiServer, str]]:
    if not redis_server.running:
        redis_server.start()
    p = build_pipeline("sec")
    with serve(
        [p],
        redis_server.url,
        api_keys=frozenset({"key-one", "key-two", "key-three"}),
        rate_limit=5,
        cors_origins=(ORIGIN,),
    ) as server:
        yield server, p.name


def test_keys_are_required_where_data_is(secured: tuple[ApiServer, str]) -> None:
    server, name = secured
    with httpx.Client(base_url=server.url) as http:
        r = http.get("/pipelines")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert http.get("/pipelines", headers={"X-API-Key": "wrong"}).status_code == 401
        assert http.get("/pipelines", headers={"X-API-Key": "key-one"}).status_code == 200
        assert (
            http.get(f"/pipelines/{name}", headers={"Authorization": "Bearer key-two"}).status_code
            == 200
        )
        # EventSource cannot send headers, so the key may come as a query parameter.
        assert http.get("/pipelines", params={"api_key": "key-one"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/dashboard"):
            assert http.get(open_path).status_code == 200, open_path
        schema = http.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
        op = schema["paths"]["/pipelines"]["get"]
        assert op["security"] == [{"ApiKey": []}] and "401" in op["responses"]


async def test_websocket_needs_a_key(secured: tuple[ApiServer, str]) -> None:
    server, name = secured
    url = server.url.replace("http://", "ws://") + f"/pipelines/{name}/tables/regions/ws"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url):
            pass
    async with websockets.connect(url + "?api_key=key-two") as ws:
        assert '"ready"' in str(await ws.recv())


def test_rate_limit_per_client(redis_server: EmbeddedRedis) -> None:
    """A server of its own with a slow refill (one request per 4 s after a burst of 3), so
    the count depends on how long the requests took, which the test measures, rather
    than on the machine being fast enough to send 12 requests within a second."""
    rate, burst, sent = 0.25, 3, 8
    if not redis_server.running:
        redis_server.start()
    with (
        serve(
            [build_pipeline("rate")],
            redis_server.url,
            api_keys=frozenset({"one", "two"}),
            rate_limit=rate,
            rate_burst=burst,
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        one = {"X-API-Key": "one"}
        started = time.monotonic()
        responses = [http.get("/pipelines", headers=one) for _ in range(sent)]
        refilled = int((time.monotonic() - started) * rate)
        statuses = [r.status_code for r in responses]
        assert statuses[:burst] == [200] * burst, statuses
        assert statuses.count(200) <= burst + refilled, (statuses, refilled)
        assert set(statuses) == {200, 429}, statuses
        limited = next(r for r in responses if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"] == "rate_limited"
        # Another client (key) has its own budget; probes are never limited.
        assert http.get("/pipelines", headers={"X-API-Key": "two"}).status_code == 200
        assert all(http.get("/healthz").status_code == 200 for _ in range(20))


def test_cors(secured: tuple[ApiServer, str]) -> None:
    server, _ = secured
    with httpx.Client(base_url=server.url) as http:
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        r = http.options("/pipelines", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        r = http.options("/pipelines", headers=preflight | {"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in r.headers
        r = http.get("/healthz", headers={"Origin": ORIGIN})
        assert r.headers["access-control-allow-origin"] == ORIGIN


def without_flowmill_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    without_flowmill_env(monkeypatch)
    settings = ApiSettings.for_pipelines([build_pipeline("dflt")])
    assert not settings.api_keys and settings.rate_limit is None and not settings.cors_origins


def test_settings_from_environment_and_secret_dir(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    without_flowmill_env(monkeypatch)
    secret = Path(str(tmp_path))
    (secret / "alice").write_text("alice-key\n")
    (secret / "..data").mkdir()
    env = {
        "FLOWMILL_API_KEYS": "a, b",
        "FLOWMILL_API_KEYS_DIR": str(secret),
        "FLOWMILL_API_RATE_LIMIT": "50",
        "FLOWMILL_API_CORS_ORIGINS": "http://x.test,http://y.test",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ApiSettings.for_pipelines([], rate_limit=None)
    assert settings.api_keys == {"a", "b", "alice-key"}
    assert settings.rate_limit == 50
    assert settings.cors_origins == ("http://x.test", "http://y.test")
    assert ApiSettings.for_pipelines([], rate_limit=7).rate_limit == 7
    # The environment wins over spec.api, and flags over both.
    doc = build_pipeline("envspec").to_manifest()
    doc["spec"]["api"] = {"rateLimit": 3, "corsOrigins": ["http://z.test"]}
    spec = parse_pipeline(doc)
    assert ApiSettings.for_pipelines([spec]).rate_limit == 50
    monkeypatch.setenv("FLOWMILL_API_RATE_LIMIT", "")  # empty: unset, so spec.api applies
    assert ApiSettings.for_pipelines([spec]).rate_limit == 3
    monkeypatch.setenv("FLOWMILL_API_RATE_LIMIT", "-1")
    with pytest.raises(ValueError, match="FLOWMILL_API_RATE_LIMIT"):
        ApiSettings.for_pipelines([])


def test_settings_from_the_pipeline_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    without_flowmill_env(monkeypatch)

    def with_api(name: str, api: dict[str, object]) -> object:
        doc = build_pipeline(name).to_manifest()
        doc["spec"]["api"] = api
        return parse_pipeline(doc)

    a = with_api("spec-a", {"rateLimit": 20, "corsOrigins": ["http://a.test"]})
    b = with_api("spec-b", {"rateLimit": 5, "corsOrigins": ["http://b.test", "http://a.test"]})
    settings = ApiSettings.for_pipelines([a, b])  # type: ignore[list-item]
    assert settings.rate_limit == 5  # one process serves both: the strictest applies
    assert settings.cors_origins == ("http://a.test", "http://b.test")
