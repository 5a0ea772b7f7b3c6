"""Errors a client can act on, each with a JSON body that says what went wrong.

- 404 names the missing resource (`pipeline`, `table`, `key`, `window`) and its name, so a
  typo in a URL is obvious;
- 422 names every bad parameter and where it was (`query`, `path`);
- 503 (Redis unreachable, still loading its data, or refusing a command) carries
  Retry-After: the process stays up and answers again as soon as Redis is back, because
  both Redis clients reconnect on the next command.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError

from flowmill_api.responses import JsonResponse

log = logging.getLogger("flowmill.api")

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, ConnectionError, TimeoutError)
"""What a Redis read can raise: an unreachable, restarting or overloaded server, one still
loading its data (BusyLoadingError), or an error reply (OOM, a script error). Each is a
503: the client cannot fix its request, and the next try may succeed."""


class ApiError(Exception):
    """An error with a status code and a JSON body."""

    status_code = 500
    error = "internal"

    def __init__(self, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, **self.fields}


class NotFound(ApiError):
    """An unknown pipeline, table, key or window."""

    status_code = 404
    error = "not_found"

    def __init__(
        self,
        resource: str,
        name: str,
        *,
        pipeline: str | None = None,
        table: str | None = None,
        detail: str | None = None,
    ) -> None:
        where = ""
        if table is not None:
            where = f" in table '{table}' of pipeline '{pipeline}'"
        elif pipeline is not None:
            where = f" in pipeline '{pipeline}'"
        super().__init__(
            detail or f"{resource} '{name}' not found{where}",
            resource=resource,
            name=name,
        )


class InvalidParameter(ApiError):
    """A parameter that passed type checks but makes no sense (min_lat > max_lat, an
    aggregate the table does not have)."""

    status_code = 422
    error = "invalid_parameter"

    def __init__(self, name: str, message: str, location: str = "query") -> None:
        super().__init__(
            f"{location} parameter '{name}': {message}",
            parameters=[{"name": name, "in": location, "message": message}],
        )


def _validation_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    params = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        location = loc[0] if loc else "request"
        name = ".".join(loc[1:]) or location
        params.append({"name": name, "in": location, "message": err.get("msg", "invalid")})
    detail = "; ".join(f"{p['in']} parameter '{p['name']}': {p['message']}" for p in params)
    return JsonResponse(
        {"error": "invalid_parameter", "detail": detail, "parameters": params},
        status_code=422,
    )


def api_error_response(exc: ApiError, retry_after: int) -> JsonResponse:
    """The answer to one of our errors, on either path."""
    headers = {"Retry-After": str(retry_after)} if exc.status_code == 503 else None
    return JsonResponse(exc.body(), status_code=exc.status_code, headers=headers)


def redis_error_response(exc: BaseException, retry_after: int, path: str) -> JsonResponse:
    """The 503 every route answers while Redis cannot answer, on either path."""
    log.warning("Redis unavailable on %s: %s: %s", path, type(exc).__name__, exc)
    return JsonResponse(
        {
            "error": "redis_unavailable",
            "detail": f"Redis cannot answer ({type(exc).__name__}); retry shortly",
        },
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )


def install_error_handlers(app: FastAPI, retry_after: int) -> None:
    """Map our errors, validation errors and Redis errors to JSON responses."""

    def api_error(request: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, ApiError)
        return api_error_response(exc, retry_after)

    def redis_error(request: Request, exc: Exception) -> JsonResponse:
        return redis_error_response(exc, retry_after, request.url.path)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_type in REDIS_ERRORS:
        app.add_exception_handler(exc_type, redis_error)
