"""What the operator reports back on a Pipeline: `kubectl get pipelines` reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowmill.spec.common import SpecModel

CONDITION_TYPES = ("Ready", "TopicsReady", "WorkersReady", "ApiReady", "Degraded")


class Condition(SpecModel):
    """One observed aspect of the Pipeline, in the Kubernetes condition convention."""

    type: str
    """Ready, TopicsReady, WorkersReady, ApiReady or Degraded."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = ""
    """CamelCase reason, for machines."""
    message: str = ""
    """Sentence, for people."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation this condition describes."""


class StepStatus(SpecModel):
    """Observed state of one step's workers."""

    name: str
    """Step name."""
    replicas: int = 0
    """Workers the Deployment has."""
    ready_replicas: int = 0
    """Workers ready."""
    max_replicas: int | None = None
    """Autoscaling ceiling after capping at the input topic's partitions."""
    lag: int | None = None
    """Consumer lag (messages), when known."""
    message: str = ""
    """Notes, e.g. that maxReplicas was capped."""


class TopicStatus(SpecModel):
    """One topic the operator manages through the Kafka admin API."""

    name: str
    """Topic name."""
    partitions: int
    """Partitions it has in Kafka."""
    state: Literal["Ready", "ShrinkRefused", "Failed"]
    """Ready: as the spec says; ShrinkRefused: the spec asks for fewer partitions than
    it has (never done); Failed: Kafka refused a change."""
    created: bool
    """Created by the operator, so deleted with the Pipeline; a topic that existed before
    is never deleted."""
    message: str = ""
    """What differs, for people."""


class PipelineStatus(SpecModel):
    """Observed state of a Pipeline."""

    observed_generation: int | None = None
    """The spec generation last reconciled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, TopicsReady, WorkersReady, ApiReady, Degraded."""
    steps: list[StepStatus] = Field(default_factory=list)
    """Per-step workers and lag."""
    steps_ready: str | None = None
    """Ready steps over all steps, e.g. 2/3 (a printer column)."""
    lag: int | None = None
    """Total consumer lag across steps (a printer column)."""
    endpoint: str | None = None
    """In-cluster URL of the API."""
    topic_management: Literal["strimzi", "admin", "unmanaged"] | None = None
    """How the topics are managed: strimzi (KafkaTopics), admin (the operator, through
    the Kafka admin API) or unmanaged."""
    topics: list[TopicStatus] | None = None
    """admin mode: each topic's state, and which ones the operator created."""
