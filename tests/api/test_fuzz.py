"""The OpenAPI document, fuzzed by schemathesis against the running app (a real uvicorn
on real Redis filled by the workers): no request may cause a 500, and every response
must match the documented status codes, content types, headers and schemas.

The pipeline and table path parameters are pinned to the served ones (an enum added to a
copy of the document), so generated requests reach real windows and entries instead of
stopping at 404; schemathesis still sends values outside the enums. The SSE route is left
out: its response never ends (test_live covers it)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.harness import ApiServer, Served

MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def pinned(document: dict[str, Any], served: Served) -> dict[str, Any]:
    tables = [t for _, t in served.pipeline.tables()]
    doc = copy.deepcopy(document)
    for path in list(doc["paths"]):
        if path.endswith("/events"):
            del doc["paths"][path]
            continue
        for operation in doc["paths"][path].values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["name"] == "pipeline":
                    param["schema"] = {"type": "string", "enum": [served.name]}
                elif param["in"] == "path" and param["name"] == "table":
                    param["schema"] = {"type": "string", "enum": tables}
                elif param["in"] == "path" and param["name"] == "key":
                    param["schema"] = {"type": "string", "enum": ["north", "v001", "nobody"]}
    return doc


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz(api: ApiServer, served: Served, mode: GenerationMode) -> None:
    """Each operation in turn, as its own bounded hypothesis run (schemathesis' pytest
    plugin does not load on pytest 9, so operations are driven directly)."""
    document = httpx.get(f"{api.url}/openapi.json").json()
    doc = pinned(document, served)
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    for operation in operations:
        has_parameters = doc["paths"][operation.path][operation.method.lower()].get("parameters")
        if mode is GenerationMode.NEGATIVE and not has_parameters:
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(base_url=api.url, checks=CHECKS)

        run()
