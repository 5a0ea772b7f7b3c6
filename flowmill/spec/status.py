"""What the operator reports back on a Pipeline: `kubectl get pipelines` reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowmill.spec.common import SpecModel

CONDITION_TYPES = ("Ready", "TopicsReady", "WorkersReady", "ApiReady", "TablesExact", "Degraded")


class Condition(SpecModel):
    """One observed aspect of the Pipeline, in the Kubernetes condition convention."""

    type: str
    """Ready, TopicsReady, WorkersReady, ApiReady, TablesExact or Degraded."""
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
    restarts: int | None = None
    """Container restarts of its pods now running (kubelet's restartCount), when known."""
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


class RebuildingPartition(SpecModel):
    """An input partition whose contributions a step is replaying from Kafka."""

    topic: str
    """Input topic."""
    partition: int
    """Partition."""
    until_offset: int
    """The offset the rebuild must reach (where the step was when Redis lost its state)."""


class IncompletePartition(SpecModel):
    """An input partition Kafka no longer held from its start when the table was rebuilt."""

    topic: str
    """Input topic."""
    partition: int
    """Partition."""
    missing_before_offset: int
    """What the offsets before this one held is missing from the table for good."""
    detected_ms: int | None = None
    """When the step found out (epoch ms)."""


class TableStatus(SpecModel):
    """Whether one serving table answers exactly, as its workers record it in Redis
    (the API serves the same as X-Flowmill-Table-State)."""

    name: str
    """Table name."""
    step: str
    """The step writing it."""
    state: Literal["exact", "rebuilding", "incomplete", "unknown"]
    """exact; rebuilding (from Kafka, after Redis lost the table: answers are partial
    until it catches up); incomplete (Kafka no longer held all it needed: partial for
    good); unknown (the operator could not read Redis, see the TablesExact condition)."""
    rebuilding: list[RebuildingPartition] | None = None
    """The partitions being rebuilt."""
    incomplete: list[IncompletePartition] | None = None
    """The partitions whose beginning is missing."""


class ReplayStatus(SpecModel):
    """Where spec.replay's request is: the step held at zero while its reset Job runs
    (Replaying), then scaled back (Succeeded); a failed Job keeps the step at zero
    (Failed, the Degraded condition says why) until a new id or the request's removal."""

    id: str
    """spec.replay.id of the request."""
    step: str
    """The step replayed."""
    phase: Literal["Replaying", "Succeeded", "Failed"]
    """Replaying: the step is at zero and its reset Job runs; Succeeded: positions and
    table reset, the step scaled back (its table says rebuilding until caught up);
    Failed: the Job failed (message says why)."""
    job: str | None = None
    """The reset Job's name."""
    message: str | None = None
    """What the Job reported."""


class PipelineStatus(SpecModel):
    """Observed state of a Pipeline."""

    observed_generation: int | None = None
    """The spec generation last reconciled."""
    phase: Literal["Running", "Paused", "Replaying"] | None = None
    """Paused while spec.paused is true (sources and steps scaled to zero), Replaying while
    spec.replay's step is held at zero for its reset Job, else Running (a printer column)."""
    replay: ReplayStatus | None = None
    """The replay request (spec.replay) last acted on and how far it got."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, TopicsReady, WorkersReady, ApiReady, Degraded."""
    steps: list[StepStatus] = Field(default_factory=list)
    """Per-step workers and lag."""
    steps_ready: str | None = None
    """Ready steps over all steps, e.g. 2/3 (a printer column)."""
    lag: int | None = None
    """Total consumer lag across steps (a printer column)."""
    restarts: int | None = None
    """Container restarts across the Pipeline's pods now running: sources, steps and the
    API (a printer column of -o wide; each new restart is also an Event)."""
    dead_letters: int | None = None
    """Records on the Pipeline's dead-letter topics (a printer column of -o wide; growth is
    also an Event with the newest reason). Counted by the operator from the topics' end
    offsets (transaction markers count too) when it manages the topics through the Kafka
    admin API; absent otherwise."""
    endpoint: str | None = None
    """In-cluster URL of the API."""
    topic_management: Literal["strimzi", "admin", "unmanaged"] | None = None
    """How the topics are managed: strimzi (KafkaTopics), admin (the operator, through
    the Kafka admin API) or unmanaged."""
    topics: list[TopicStatus] | None = None
    """admin mode: each topic's state, and which ones the operator created."""
    tables: list[TableStatus] | None = None
    """Each serving table's state (read from Redis by the operator)."""
    tables_state: Literal["exact", "rebuilding", "incomplete", "unknown"] | None = None
    """The worst state among the tables (a printer column)."""
