"""A Pipeline's health: its graph, each node's rates, lag, dead letters (with their
reasons), restarts and state (flowmill_api.health). The dashboard's health view polls it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from flowmill_api.models import PipelineHealth
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, PipelineName
from flowmill_api.state import app_state

router = APIRouter(tags=["operations"], responses={404: ERRORS[404]})


@router.get(
    "/pipelines/{pipeline}/health",
    response_model=PipelineHealth,
    summary="The Pipeline as a graph, with each part's rates, lag, dead letters and restarts",
)
async def pipeline_health(request: Request, pipeline: PipelineName) -> JsonResponse:
    state = app_state(request)
    state.catalog.pipeline(pipeline)  # 404 naming it
    body = await state.health.health(pipeline)
    return JsonResponse(body, headers={"Cache-Control": "no-store"})
