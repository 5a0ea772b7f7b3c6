"""Parameters and error responses shared by the routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query

from flowmill_api.models import ErrorBody
from flowmill_api.state import MAX_OFFSET, MAX_PAGE

PipelineName = Annotated[str, Path(description="The Pipeline's metadata.name.")]
TableName = Annotated[str, Path(description="The table (a step's sink.redis.table).")]
KeyName = Annotated[str, Path(description="A value of the table's key field.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most items returned.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items skipped.")]

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown pipeline, table, key or window"},
    422: {"model": ErrorBody, "description": "A parameter is invalid (each one is named)"},
    503: {
        "model": ErrorBody,
        "description": "Redis is unreachable; retry after the Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
