"""Which pipelines and tables this API serves, and their shapes (from the manifests)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from flowmill.spec import Pipeline
from flowmill_api import queries
from flowmill_api.catalog import Table
from flowmill_api.errors import REDIS_ERRORS
from flowmill_api.models import PipelineList, PipelineModel, TableModel
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, PipelineName, TableName
from flowmill_api.state import app_state
from flowmill_api.store import TableStore

router = APIRouter(tags=["catalog"], responses={404: ERRORS[404]})


def table_links(t: Table) -> dict[str, str]:
    base = f"/pipelines/{t.pipeline}/tables/{t.name}"
    links = {"self": base, "events": f"{base}/events", "websocket": f"{base}/ws"}
    if t.kind == "window":
        links |= {
            "keys": f"{base}/keys",
            "key_current": f"{base}/keys/{{key}}/windows/current",
            "key_latest": f"{base}/keys/{{key}}/windows/latest",
            "key_range": f"{base}/keys/{{key}}/windows",
        }
        if t.is_session:
            links |= {
                "sessions_recent": f"{base}/sessions/recent",
                "sessions_top": f"{base}/sessions/top",
            }
        else:
            links |= {"windows": f"{base}/windows", "current_top": f"{base}/windows/current/top"}
    else:
        links |= {"entries": f"{base}/entries", "entry": f"{base}/entries/{{key}}"}
        if t.geo is not None:
            links["within"] = f"{base}/within"
    return links


def table_dict(t: Table, status: dict[str, str] | None) -> dict[str, Any]:
    """The table's shape, and its state from its status hash (TableStore.statuses)."""
    window = None
    if t.kind == "window":
        window = {
            "type": t.window_type,
            "size_ms": t.window_size_ms,
            "advance_ms": t.window_advance_ms,
            "gap_ms": t.session_gap_ms,
            "max_duration_ms": t.session_max_ms,
            "allowed_lateness_ms": t.allowed_lateness_ms,
            "retain": t.retain,
            "event_time_field": t.event_time_field,
        }
    return {
        "pipeline": t.pipeline,
        "name": t.name,
        "step": t.step,
        "kind": t.kind,
        "key_field": t.key_field,
        "window": window,
        "aggregates": [{"name": a.name, "op": a.op, "field": a.field} for a in t.aggregates],
        "latest_fields": list(t.latest_fields) if t.latest_fields else None,
        "geo": {"lat": t.geo.lat, "lon": t.geo.lon} if t.geo else None,
        "ttl_seconds": t.ttl_seconds,
        "live": t.publish,
        "links": table_links(t),
        **_state_fields(status),
    }


def _state_fields(status: dict[str, str] | None) -> dict[str, Any]:
    """`status` always (`unknown` while Redis does not answer); the same `state` object as
    the table's own responses when it is not exact."""
    if status is None:
        return {"status": "unknown"}
    state = queries.table_state(status)
    fields: dict[str, Any] = {"status": queries.status_of(state)}
    if state is not None:
        fields["state"] = state
    return fields


async def _statuses(store: TableStore, tables: list[Table]) -> list[dict[str, str] | None]:
    """Each table's status hash; None for each when Redis does not answer, since the
    catalog describes the manifests and must not fail with Redis."""
    try:
        return list(await store.statuses(tables))
    except REDIS_ERRORS:
        return [None] * len(tables)


async def pipeline_dict(store: TableStore, p: Pipeline, tables: dict[str, Table]) -> dict[str, Any]:
    statuses = await _statuses(store, list(tables.values()))
    return {
        "name": p.name,
        "namespace": p.metadata.namespace,
        "tables": [table_dict(t, s) for t, s in zip(tables.values(), statuses, strict=True)],
    }


@router.get("/pipelines", response_model=PipelineList, summary="Every pipeline and its tables")
async def list_pipelines(request: Request) -> JsonResponse:
    state = app_state(request)
    catalog = state.catalog
    return JsonResponse(
        {
            "pipelines": [
                await pipeline_dict(state.store, p, catalog.tables[name])
                for name, p in catalog.pipelines.items()
            ]
        }
    )


@router.get("/pipelines/{pipeline}", response_model=PipelineModel, summary="One pipeline")
async def get_pipeline(request: Request, pipeline: PipelineName) -> JsonResponse:
    state = app_state(request)
    catalog = state.catalog
    p = catalog.pipeline(pipeline)
    return JsonResponse(await pipeline_dict(state.store, p, catalog.tables[pipeline]))


@router.get(
    "/pipelines/{pipeline}/tables/{table}",
    response_model=TableModel,
    summary="One table: key field, window, aggregates, geo fields, links",
)
async def get_table(request: Request, pipeline: PipelineName, table: TableName) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table)
    (status,) = await _statuses(state.store, [t])
    return JsonResponse(table_dict(t, status))
