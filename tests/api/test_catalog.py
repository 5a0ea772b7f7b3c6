"""Pipelines and tables as the manifest describes them; health, readiness, metrics, docs."""

from __future__ import annotations

import httpx

from tests.api.harness import Served


def test_lists_pipelines_and_tables(http: httpx.Client, served: Served) -> None:
    body = http.get("/pipelines").json()
    assert [p["name"] for p in body["pipelines"]] == [served.name]
    tables = {t["name"]: t for t in body["pipelines"][0]["tables"]}
    assert set(tables) == {"regions", "hops", "vehicles", "speeds"}
    assert tables["speeds"]["latest_fields"] == ["speed"] and tables["speeds"]["geo"] is None

    regions = tables["regions"]
    assert regions["kind"] == "window" and regions["key_field"] == "region_id"
    assert regions["window"]["size_ms"] == 60_000 and regions["window"]["type"] == "tumbling"
    assert {a["name"]: (a["op"], a["field"]) for a in regions["aggregates"]} == {
        "trips": ("count", None),
        "revenue": ("sum", "fare"),
        "avg_fare": ("avg", "fare"),
        "min_fare": ("min", "fare"),
        "max_fare": ("max", "fare"),
        "riders": ("distinct", "rider"),
    }
    assert regions["live"] is True
    hops = tables["hops"]
    assert hops["window"]["advance_ms"] == 60_000 and hops["window"]["size_ms"] == 120_000
    assert hops["live"] is False
    vehicles = tables["vehicles"]
    assert vehicles["kind"] == "latest" and vehicles["geo"] == {"lat": "lat", "lon": "lon"}
    assert vehicles["links"]["within"] == f"{served.base('vehicles')}/within"

    assert http.get(f"/pipelines/{served.name}").json()["tables"] == body["pipelines"][0]["tables"]
    assert http.get(served.base("regions")).json() == regions


def test_unknown_pipeline_and_table_are_404s_naming_them(
    http: httpx.Client, served: Served
) -> None:
    r = http.get("/pipelines/nope")
    assert r.status_code == 404
    assert r.json()["resource"] == "pipeline" and r.json()["name"] == "nope"
    assert "pipeline 'nope' not found" in r.json()["detail"]

    for path in (
        f"/pipelines/{served.name}/tables/ghost",
        f"/pipelines/{served.name}/tables/ghost/keys/north/windows/current",
        f"/pipelines/{served.name}/tables/ghost/entries",
    ):
        r = http.get(path)
        assert r.status_code == 404, path
        assert r.json()["resource"] == "table" and r.json()["name"] == "ghost"
        assert served.name in r.json()["detail"]

    r = http.get("/pipelines/nope/tables/regions/keys")
    assert r.status_code == 404 and r.json()["resource"] == "pipeline"


def test_health_readiness_and_docs(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["checks"]["redis"]["ok"] is True
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = http.get("/openapi.json").json()
    assert "/pipelines/{pipeline}/tables/{table}/keys/{key}/windows/current" in schema["paths"]
    assert http.get("/", follow_redirects=False).headers["location"] == "/dashboard"


def test_metrics_count_requests_by_route_template_and_status(
    http: httpx.Client, served: Served
) -> None:
    base = served.base("regions")
    http.get(f"{base}/keys/north/windows/current")
    http.get(f"{base}/keys/south/windows/current")
    http.get(f"{base}/keys/nowhere/windows/current")
    http.get("/no/such/path")
    text = http.get("/metrics").text
    route = "/pipelines/{pipeline}/tables/{table}/keys/{key}/windows/current"

    def sample(name: str, status: str) -> float:
        prefix = f'{name}{{method="GET",route="{route}",status="{status}"}} '
        line = next(x for x in text.splitlines() if x.startswith(prefix))
        return float(line.split()[-1])

    assert sample("flowmill_api_requests_total", "200") >= 2
    assert sample("flowmill_api_requests_total", "404") >= 1
    assert sample("flowmill_api_request_duration_seconds_count", "200") >= 2
    # Raw paths never become labels: an unknown URL counts under one series.
    assert 'route="<unmatched>",status="404"' in text
    assert "north" not in text and "/no/such/path" not in text
