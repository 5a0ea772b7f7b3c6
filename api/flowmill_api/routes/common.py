"""Path names and error responses shared by the routes (numeric parameters, which the
fast path reads too, are in flowmill_api.params)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from flowmill_api import queries
from flowmill_api.models import ErrorBody
from flowmill_api.responses import JsonResponse

PipelineName = Annotated[str, Path(description="The Pipeline's metadata.name.")]
TableName = Annotated[str, Path(description="The table (a step's sink.redis.table).")]
KeyName = Annotated[str, Path(description="A value of the table's key field.")]

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown pipeline, table, key or window"},
    422: {"model": ErrorBody, "description": "A parameter is invalid (each one is named)"},
    503: {
        "model": ErrorBody,
        "description": "Redis is unreachable; retry after the Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def table_response(body: queries.Body) -> JsonResponse:
    """A table route's answer, with the table's state in queries.STATE_HEADER."""
    return JsonResponse(body, headers={queries.STATE_HEADER: queries.state_header(body)})
