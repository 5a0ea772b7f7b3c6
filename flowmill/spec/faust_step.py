"""A step run by a user's Faust agent instead of flowmill's built-in processing: custom
Python stream code with per-key state (Faust Tables), deployed, scaled and monitored like
every other step (docs/faust.md)."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from flowmill.spec.common import Duration, Name, SpecModel, TopicName, cel_rule, duration_seconds

MIN_STALL_TIMEOUT_S = 10

# Faust names a table's changelog `{app id}-{table}-changelog`, so a table name must be
# usable inside a topic name.
FaustTableName = Annotated[
    str, Field(pattern=r"^[a-zA-Z0-9_][a-zA-Z0-9._-]*$", min_length=1, max_length=100)
]
FaustObject = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", max_length=300)]
FaustAgentName = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*$", max_length=300)]


class FaustCode(SpecModel):
    """Where the agent's code comes from when it is not installed in the image."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "has(self.configMap) || has(self.path)",
                    "set configMap (a cluster), path (flowmill run) or both",
                )
            ]
        }
    }

    config_map: Name | None = None
    """A ConfigMap in the Pipeline's namespace whose keys are Python files (e.g. `kubectl
    create configmap fraud-code --from-file=fraud_rules.py`); a cluster mounts it
    read-only and puts it first on the worker's import path."""
    path: str | None = Field(default=None, min_length=1, max_length=1000)
    """For `flowmill run`: a directory with the same files, relative to the manifest
    file (or absolute), put first on the import path."""

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.config_map is None and self.path is None:
            raise ValueError("set configMap (a cluster), path (flowmill run) or both")
        return self


class FaustSpec(SpecModel):
    """Run one agent of a Faust app as this step: flowmill sets its broker, consumer
    group (the app id) and topics; the agent consumes the step's `from` topic."""

    app: FaustObject
    """The `faust.App`, as module:attribute (what `faust -A` takes, e.g.
    fraud_rules:app); the module must be importable in the worker (installed in the
    image, or from `code`)."""
    agent: FaustAgentName
    """The agent run by this step: its function name (detect) or Faust's full name
    (fraud_rules.detect). The app's other agents do not run in this step."""
    outputs: dict[str, TopicName] = Field(default_factory=dict, max_length=20)
    """Topics the app writes, as {name in the code: Pipeline topic}; each must be
    declared in spec.topics. A topic the code creates that is neither the agent's input
    nor listed here stops the worker at start."""
    tables: list[FaustTableName] = Field(default_factory=list, max_length=20)
    """Names of the app's Tables. Their changelog topics are created with the input
    topic's partitions (Faust co-partitions a table with its stream); a Table not
    listed stops the worker at start."""
    code: FaustCode | None = None
    """Code from a ConfigMap (a cluster) or a directory (flowmill run); unset: the app's
    module is installed in the image (docs/faust.md shows the Dockerfile)."""
    stall_timeout: Duration = "60s"
    """How long the worker may be ready with input waiting (its group's committed offsets
    behind the ends) while it neither takes in nor commits any of it; then it exits with
    code 77 and is restarted (by Kubernetes, or `flowmill run`). A Faust worker can stop
    consuming while it reports ready (docs/faust.md); this ends such a stall. Set it
    above the longest time the agent may spend on one event. At least 10s."""

    @model_validator(mode="after")
    def _stall_timeout_long_enough(self) -> Self:
        # Shorter than two of Faust's commit intervals (2.8 s) plus the lag's refresh, a
        # busy healthy worker would look stalled.
        if duration_seconds(self.stall_timeout) < MIN_STALL_TIMEOUT_S:
            raise ValueError(
                f"stallTimeout {self.stall_timeout} is too short: at least {MIN_STALL_TIMEOUT_S}s"
            )
        return self

    @model_validator(mode="after")
    def _unique_tables(self) -> Self:
        seen: set[str] = set()
        for table in self.tables:
            if table in seen:
                raise ValueError(f"table '{table}' is listed twice")
            seen.add(table)
        return self
