"""JSON responses rendered with orjson.

Hot routes build plain dicts and return them through this class, skipping FastAPI's
re-validation of the response model (which costs more than the Redis round trip); the
models still document the shape in OpenAPI, and the schemathesis tests check that every
response matches them.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
