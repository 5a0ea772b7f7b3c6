"""Probes and metrics: /healthz says the process is up (Kubernetes restarts it if not),
/readyz says it can answer (Redis reachable, pipelines loaded), so a Redis outage takes
the pods out of the Service without restarting them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flowmill_api.errors import REDIS_ERRORS
from flowmill_api.models import Health, Readiness
from flowmill_api.responses import JsonResponse
from flowmill_api.state import app_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> JsonResponse:
    return JsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Redis is reachable and pipelines are loaded",
    responses={503: {"model": Readiness, "description": "Not ready; see checks"}},
)
async def readyz(request: Request) -> JsonResponse:
    state = app_state(request)
    checks = {}
    names = ", ".join(state.catalog.pipelines)
    checks["pipelines"] = {
        "ok": bool(state.catalog.pipelines),
        "detail": f"serving {names}" if names else "no pipeline loaded",
    }
    try:
        await asyncio.wait_for(state.store.ping(), state.settings.redis_timeout_seconds)
        checks["redis"] = {"ok": True, "detail": "PING answered"}
    except REDIS_ERRORS as err:
        checks["redis"] = {"ok": False, "detail": f"no answer: {type(err).__name__}: {err}"}
    ready = all(c["ok"] for c in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": str(state.settings.retry_after_seconds)},
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    registry = app_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
