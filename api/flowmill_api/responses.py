"""HTTP JSON responses, rendered with orjson. (The Redis protocol client is
`flowmill_api.redis_pool`.)

Hot routes build plain dicts and return them through this class, skipping FastAPI's
re-validation of the response model (which costs more than the Redis round trip); the
models still document the shape in OpenAPI, and the schemathesis tests check that every
response matches them. The fast path serializes with `dumps` too, so both paths render a
body byte for byte alike.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=JSON_OPTIONS)


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
