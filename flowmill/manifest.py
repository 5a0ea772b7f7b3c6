"""Read Pipeline manifests from YAML and explain what is wrong with them, field by field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flowmill.manifest_yaml import ManifestYamlError, load_yaml_documents
from flowmill.spec import Pipeline
from flowmill.spec.common import DURATION_PATTERN, FIELD_PATTERN, NAME_PATTERN, TOPIC_PATTERN

_PATTERN_HINTS = {
    DURATION_PATTERN: "not a duration: use an integer and a unit, e.g. 500ms, 30s, 1m, 24h, 7d",
    NAME_PATTERN: "not a DNS-1123 label: lower-case letters, digits and '-', "
    "starting and ending with a letter or digit",
    TOPIC_PATTERN: "not a Kafka topic name: letters, digits, '.', '_' and '-' only",
    FIELD_PATTERN: "not a field path: identifiers joined by dots, e.g. data.station_id",
}


@dataclass(frozen=True)
class FieldError:
    """One problem in a manifest: where (`spec.steps[0].from`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PipelineInvalid(ValueError):
    """A manifest that is not a valid Pipeline; `errors` lists every problem found."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: invalid Pipeline ({len(errors)} error(s))\n{lines}")


def field_path(loc: Iterable[int | str]) -> str:
    """`('spec', 'steps', 0, 'from')` -> `spec.steps[0].from`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def errors_of(err: ValidationError) -> list[FieldError]:
    """Every error of a pydantic ValidationError, with manifest-style paths."""
    found = []
    for item in err.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; fields are camelCase)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "string_pattern_mismatch":
            message = _PATTERN_HINTS.get(item["ctx"]["pattern"], message)
            message = f"{message} (got {item['input']!r})"
        found.append(FieldError(field_path(item["loc"]), message))
    return found


def parse_pipeline(document: Any, source: str = "<manifest>") -> Pipeline:
    """Validate one decoded YAML document as a Pipeline, or raise PipelineInvalid."""
    if not isinstance(document, dict):
        raise PipelineInvalid(source, [FieldError("(document)", "expected a mapping")])
    try:
        return Pipeline.model_validate(document)
    except ValidationError as err:
        raise PipelineInvalid(source, errors_of(err)) from None


def pipeline_warnings(pipeline: Pipeline) -> list[FieldError]:
    """What is accepted but will not happen as written: a step never runs more workers
    than its input topic has partitions (the rest would sit idle), so the operator caps
    replicas and maxReplicas there."""
    warnings = []
    for i, step in enumerate(pipeline.spec.steps):
        partitions = pipeline.spec.topic(step.from_).partitions
        wanted = [("replicas", step.replicas)]
        if step.autoscaling is not None:
            wanted = [("autoscaling.maxReplicas", step.autoscaling.max_replicas)]
        for field, count in wanted:
            if count > partitions:
                warnings.append(
                    FieldError(
                        f"spec.steps[{i}].{field}",
                        f"{count} is more than the {partitions} partition(s) of topic "
                        f"{step.from_}; capped at {partitions}",
                    )
                )
    return warnings


def load_pipelines(path: str | Path) -> list[Pipeline]:
    """Every Pipeline in a YAML file (documents of other kinds are ignored, so a file can
    also hold the Secrets or ConfigMaps a Pipeline uses)."""
    path = Path(path)
    return pipelines_from_yaml(path.read_bytes(), str(path))


def pipelines_from_yaml(text: bytes | str, source: str = "<manifest>") -> list[Pipeline]:
    """Every Pipeline in YAML text, read with the manifest limits of
    flowmill.manifest_yaml (size, depth, aliases, numbers, duplicate keys)."""
    try:
        documents = [d for d in load_yaml_documents(text) if d is not None]
    except ManifestYamlError as err:
        raise PipelineInvalid(source, [FieldError(err.where, err.problem)]) from None
    except yaml.YAMLError as err:
        raise PipelineInvalid(source, [FieldError("(yaml)", str(err))]) from None
    pipelines = []
    all_errors: list[FieldError] = []
    for index, document in enumerate(documents):
        if isinstance(document, dict) and document.get("kind") not in (None, "Pipeline"):
            continue
        try:
            pipelines.append(parse_pipeline(document, source))
        except PipelineInvalid as err:
            prefix = f"[document {index}] " if len(documents) > 1 else ""
            all_errors += [FieldError(prefix + e.path, e.message) for e in err.errors]
    if all_errors:
        raise PipelineInvalid(source, all_errors)
    if not pipelines:
        raise PipelineInvalid(source, [FieldError("(document)", "no Pipeline found")])
    return pipelines


def load_pipeline(path: str | Path) -> Pipeline:
    """The one Pipeline in a YAML file."""
    pipelines = load_pipelines(path)
    if len(pipelines) != 1:
        names = ", ".join(p.name for p in pipelines)
        raise PipelineInvalid(
            str(path), [FieldError("(document)", f"expected one Pipeline, found {names}")]
        )
    return pipelines[0]
