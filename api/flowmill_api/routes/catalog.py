"""Which pipelines and tables this API serves, and their shapes (from the manifests)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from flowmill.spec import Pipeline
from flowmill_api.catalog import Table
from flowmill_api.models import PipelineList, PipelineModel, TableModel
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, PipelineName, TableName
from flowmill_api.state import app_state

router = APIRouter(tags=["catalog"], responses={404: ERRORS[404]})


def table_links(t: Table) -> dict[str, str]:
    base = f"/pipelines/{t.pipeline}/tables/{t.name}"
    links = {"self": base, "events": f"{base}/events", "websocket": f"{base}/ws"}
    if t.kind == "window":
        links |= {
            "keys": f"{base}/keys",
            "windows": f"{base}/windows",
            "current_top": f"{base}/windows/current/top",
            "key_current": f"{base}/keys/{{key}}/windows/current",
            "key_latest": f"{base}/keys/{{key}}/windows/latest",
            "key_range": f"{base}/keys/{{key}}/windows",
        }
    else:
        links |= {"entries": f"{base}/entries", "entry": f"{base}/entries/{{key}}"}
        if t.geo is not None:
            links["within"] = f"{base}/within"
    return links


def table_dict(t: Table) -> dict[str, Any]:
    window = None
    if t.kind == "window":
        window = {
            "type": t.window_type,
            "size_ms": t.window_size_ms,
            "advance_ms": t.window_advance_ms,
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
    }


def pipeline_dict(p: Pipeline, tables: dict[str, Table]) -> dict[str, Any]:
    return {
        "name": p.name,
        "namespace": p.metadata.namespace,
        "tables": [table_dict(t) for t in tables.values()],
    }


@router.get("/pipelines", response_model=PipelineList, summary="Every pipeline and its tables")
async def list_pipelines(request: Request) -> JsonResponse:
    catalog = app_state(request).catalog
    return JsonResponse(
        {
            "pipelines": [
                pipeline_dict(p, catalog.tables[name]) for name, p in catalog.pipelines.items()
            ]
        }
    )


@router.get("/pipelines/{pipeline}", response_model=PipelineModel, summary="One pipeline")
async def get_pipeline(request: Request, pipeline: PipelineName) -> JsonResponse:
    catalog = app_state(request).catalog
    return JsonResponse(pipeline_dict(catalog.pipeline(pipeline), catalog.tables[pipeline]))


@router.get(
    "/pipelines/{pipeline}/tables/{table}",
    response_model=TableModel,
    summary="One table: key field, window, aggregates, geo fields, links",
)
async def get_table(request: Request, pipeline: PipelineName, table: TableName) -> JsonResponse:
    return JsonResponse(table_dict(app_state(request).catalog.table(pipeline, table)))
