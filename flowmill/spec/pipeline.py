"""The Pipeline resource: the single source of truth for the CRD schema, the operator's
validation, and what workers and the API read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from flowmill.spec.common import Name, SpecModel, TopicName, cel_rule
from flowmill.spec.pod_template import PodTemplate
from flowmill.spec.sources import SourceSpec
from flowmill.spec.steps import StepSpec

GROUP = "flowmill.dev"
VERSION = "v1alpha1"
KIND = "Pipeline"
PLURAL = "pipelines"
API_VERSION = f"{GROUP}/{VERSION}"

TopicManagement = Literal["strimzi", "admin", "unmanaged"]


# Optional fields are absent in CEL unless set, so the rule supplies the model defaults.
_REPLICA_RANGE_RULE = (
    "(has(self.maxReplicas) ? self.maxReplicas : 1) >= "
    "(has(self.minReplicas) ? self.minReplicas : 1)"
)


class KafkaConnection(SpecModel):
    """The Kafka cluster the Pipeline's topics live on."""

    cluster: Name | None = None
    """Name of the Strimzi `Kafka` resource; its topics are created as KafkaTopic
    resources labelled strimzi.io/cluster. Unset for local runs."""
    namespace: Name | None = None
    """Namespace of the Strimzi cluster (and so of the KafkaTopics); unset means the
    Pipeline's own namespace."""
    bootstrap_servers: str | None = Field(default=None, max_length=1000)
    """host:port list the workers connect to; defaults to the Strimzi cluster's bootstrap
    Service, {cluster}-kafka-bootstrap.{namespace}.svc:9092."""
    topic_management: TopicManagement | None = None
    """Who creates the Pipeline's topics: strimzi (KafkaTopic resources for Strimzi's
    topic operator; needs cluster), admin (the operator itself, through the Kafka admin
    API at bootstrapServers: for plain Kafka, MSK, Confluent, Redpanda), or unmanaged
    (nobody: the topics must exist). Unset uses the operator's setting."""


class SecretKeyRef(SpecModel):
    """A key of a Secret in the Pipeline's namespace."""

    name: Name
    """Secret name."""
    key: str = Field(min_length=1, max_length=253)
    """Key inside the Secret."""


class RedisConnection(SpecModel):
    """The Redis server that holds serving tables."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!(has(self.url) && has(self.secretRef))", "set url or secretRef, not both"
                )
            ]
        }
    }

    url: str | None = Field(default=None, pattern=r"^rediss?://", max_length=1000)
    """redis://host:port/db (rediss:// for TLS)."""
    secret_ref: SecretKeyRef | None = None
    """A Secret key holding the URL (when it carries a password)."""

    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.url is not None and self.secret_ref is not None:
            raise ValueError("set url or secretRef, not both")
        return self


class TopicSpec(SpecModel):
    """A Kafka topic the Pipeline owns."""

    name: TopicName
    """Topic name, unique in the Pipeline."""
    partitions: int = Field(default=1, ge=1, le=10_000)
    """Partitions; a step never runs more workers than its input topic has partitions."""
    replicas: int = Field(default=1, ge=1, le=10)
    """Replication factor."""
    config: dict[str, str] = Field(default_factory=dict, max_length=64)
    """Kafka topic configs, e.g. {retention.ms: "86400000", cleanup.policy: compact}."""

    @model_validator(mode="before")
    @classmethod
    def _config_as_strings(cls, data: Any) -> Any:
        # YAML turns `retention.ms: 86400000` into an int; Kafka wants strings.
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = {**data, "config": {k: _kafka_str(v) for k, v in data["config"].items()}}
        return data


def _kafka_str(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


class ApiAutoscaling(SpecModel):
    """Scale the API on CPU."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    _REPLICA_RANGE_RULE,
                    "maxReplicas must be >= minReplicas",
                    ".maxReplicas",
                )
            ]
        }
    }

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest API pods."""
    max_replicas: int = Field(default=1, ge=1, le=1000)
    """Most API pods."""
    cpu: int = Field(default=70, ge=1, le=100)
    """Target average CPU utilisation, percent of the request."""

    @field_validator("max_replicas")
    @classmethod
    def _range(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("min_replicas", 1):
            raise ValueError("maxReplicas must be >= minReplicas")
        return value


class ApiSpec(SpecModel):
    """The serving API (REST, SSE, WebSocket, dashboard)."""

    enabled: bool = True
    """Run the API at all."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """API pods when autoscaling is unset."""
    autoscaling: ApiAutoscaling | None = None
    """Scale on CPU instead of a fixed count."""
    api_keys_secret: Name | None = None
    """Secret whose values are accepted API keys (X-API-Key header); unset: no keys."""
    rate_limit: int | None = Field(default=None, ge=1)
    """Requests per second allowed per client; unset: unlimited."""
    cors_origins: list[str] = Field(default_factory=list, max_length=50)
    """Origins allowed by CORS."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the API's Service."""
    template: PodTemplate | None = None
    """Volumes, env, resources and placement of the API's pods, merged over
    spec.template."""


class PipelineSpec(SpecModel):
    """A streaming pipeline: topics, the sources feeding them, the steps processing
    them, and the API serving the results."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!has(self.sources) || self.sources.all(s, self.topics.exists(t, t.name == s.to))",
                    "spec.sources[].to must name a topic declared in spec.topics",
                    ".sources",
                ),
                cel_rule(
                    "!has(self.steps) || self.steps.all(s, self.topics.exists(t, t.name == s.from))",
                    "spec.steps[].from must name a topic declared in spec.topics",
                    ".steps",
                ),
                cel_rule(
                    "!has(self.steps) || "
                    "self.steps.all(s, !has(s.deadLetter) || "
                    "self.topics.exists(t, t.name == s.deadLetter))",
                    "spec.steps[].deadLetter must name a topic declared in spec.topics",
                    ".steps",
                ),
                cel_rule(
                    "!has(self.steps) || self.steps.all(s, !has(s.validate) || "
                    "!has(s.validate.deadLetter) || "
                    "self.topics.exists(t, t.name == s.validate.deadLetter))",
                    "spec.steps[].validate.deadLetter must name a topic declared in spec.topics",
                    ".steps",
                ),
                cel_rule(
                    "!has(self.steps) || "
                    "self.steps.all(s, !has(s.correlate) || "
                    "self.topics.exists(t, t.name == s.correlate.with))",
                    "spec.steps[].correlate.with must name a topic declared in spec.topics",
                    ".steps",
                ),
                cel_rule(
                    "!has(self.steps) || "
                    "self.steps.all(s, !has(s.sink) || !has(s.sink.kafka) || "
                    "self.topics.exists(t, t.name == s.sink.kafka.topic))",
                    "spec.steps[].sink.kafka.topic must name a topic declared in spec.topics",
                    ".steps",
                ),
            ]
        }
    }

    kafka: KafkaConnection = Field(default_factory=KafkaConnection)
    """Kafka cluster; empty for local runs (flowmill run starts a broker)."""
    redis: RedisConnection = Field(default_factory=RedisConnection)
    """Redis for serving tables; empty for local runs (flowmill run starts one)."""
    topics: list[TopicSpec] = Field(min_length=1, max_length=100)
    """Topics the Pipeline owns; every topic a source or step names is declared here."""
    sources: list[SourceSpec] = Field(default_factory=list, max_length=50)
    """Ingestion processes."""
    steps: list[StepSpec] = Field(default_factory=list, max_length=50)
    """Processing stages."""
    api: ApiSpec = Field(default_factory=ApiSpec)
    """The serving API."""
    image: str | None = Field(default=None, max_length=500)
    """Image for workers and API; unset uses the operator's default."""
    template: PodTemplate | None = None
    """Defaults for the pods of every source, step and the API; each part's own
    template is merged over it (maps by key, env and volumes by name, volumeMounts by
    mountPath, lists appended; see docs/operator.md)."""

    @model_validator(mode="after")
    def _references(self) -> Self:
        errors = list(self._reference_errors())
        if errors:
            raise ValidationError.from_exception_data("PipelineSpec", errors)
        return self

    def _reference_errors(self) -> Iterator[InitErrorDetails]:
        declared = {t.name for t in self.topics}

        def missing(loc: tuple[str | int, ...], topic: str) -> InitErrorDetails:
            return {
                "type": PydanticCustomError(
                    "undeclared_topic",
                    "topic '{topic}' is not declared in spec.topics",
                    {"topic": topic},
                ),
                "loc": loc,
                "input": topic,
            }

        # Sources and steps share one namespace: a kafka source and a step of the same
        # name would share the consumer group flowmill.{pipeline}.{name}.
        for kinds in (
            [("topics", [t.name for t in self.topics])],
            [("sources", [s.name for s in self.sources]), ("steps", [s.name for s in self.steps])],
        ):
            seen: dict[str, str] = {}
            for kind, names in kinds:
                for i, name in enumerate(names):
                    if name in seen:
                        yield {
                            "type": PydanticCustomError(
                                "duplicate_name",
                                "duplicate name '{name}' (also {other})",
                                {"name": name, "other": seen[name]},
                            ),
                            "loc": (kind, i, "name"),
                            "input": name,
                        }
                    seen.setdefault(name, f"spec.{kind}[{i}]")
        yield from _topic_collisions([t.name for t in self.topics])
        yield from _topic_cycles(self)
        for i, source in enumerate(self.sources):
            if source.to not in declared:
                yield missing(("sources", i, "to"), source.to)
        tables: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step.from_ not in declared:
                yield missing(("steps", i, "from"), step.from_)
            if step.dead_letter and step.dead_letter not in declared:
                yield missing(("steps", i, "deadLetter"), step.dead_letter)
            if step.validate_ and step.validate_.dead_letter not in (None, *declared):
                yield missing(
                    ("steps", i, "validate", "deadLetter"), str(step.validate_.dead_letter)
                )
            if step.correlate and step.correlate.with_ not in declared:
                yield missing(("steps", i, "correlate", "with"), step.correlate.with_)
            elif step.correlate and step.from_ in declared:
                ours, theirs = self.topic(step.from_), self.topic(step.correlate.with_)
                if ours.partitions != theirs.partitions:
                    # A join keeps its pending events per partition, so both sides of a key
                    # must land in the same partition number.
                    yield {
                        "type": PydanticCustomError(
                            "not_copartitioned",
                            "topics '{a}' ({n} partitions) and '{b}' ({m}) must have the same "
                            "partition count to be joined",
                            {
                                "a": ours.name,
                                "n": ours.partitions,
                                "b": theirs.name,
                                "m": theirs.partitions,
                            },
                        ),
                        "loc": ("steps", i, "correlate", "with"),
                        "input": theirs.name,
                    }
            if step.sink and step.sink.kafka and step.sink.kafka.topic not in declared:
                yield missing(("steps", i, "sink", "kafka", "topic"), step.sink.kafka.topic)
            if step.sink and step.sink.redis:
                table = step.sink.redis.table
                if table in tables:
                    yield {
                        "type": PydanticCustomError(
                            "duplicate_table",
                            "table '{table}' is already written by spec.steps[{other}]",
                            {"table": table, "other": tables[table]},
                        ),
                        "loc": ("steps", i, "sink", "redis", "table"),
                        "input": table,
                    }
                tables[table] = i
            yield from _expression_errors(step, i)

    def pod_template(self, part: SourceSpec | StepSpec | ApiSpec) -> PodTemplate:
        """What a part's pods get: its own template merged over spec.template (a step's
        `resources` counts as its template's)."""
        own = part.template or PodTemplate()
        if isinstance(part, StepSpec) and part.resources is not None:
            own = own.model_copy(update={"resources": part.resources})
        return own.merged_over(self.template)

    def topic(self, name: str) -> TopicSpec:
        """The declared topic called `name`."""
        return next(t for t in self.topics if t.name == name)

    def step(self, name: str) -> StepSpec:
        """The step called `name` (KeyError if there is none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def source(self, name: str) -> SourceSpec:
        """The source called `name` (KeyError if there is none)."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


def _topic_collisions(names: list[str]) -> Iterator[InitErrorDetails]:
    """Kafka refuses a topic whose name differs from another's only by '.' versus '_'
    (both become '_' in its metric names)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        folded = name.replace(".", "_")
        if folded in seen and names[seen[folded]] != name:
            yield {
                "type": PydanticCustomError(
                    "topic_collision",
                    "topic '{name}' collides with '{other}' (Kafka treats '.' and '_' alike)",
                    {"name": name, "other": names[seen[folded]]},
                ),
                "loc": ("topics", i, "name"),
                "input": name,
            }
        seen.setdefault(folded, i)


def _topic_cycles(spec: PipelineSpec) -> Iterator[InitErrorDetails]:
    """A step (or a kafka source on the same cluster) whose outputs lead back to its own
    input would process its own results forever: one event becomes endless records."""
    # topic -> (topic written, where the write is configured)
    edges: dict[str, list[tuple[str, tuple[str | int, ...]]]] = {}
    for i, step in enumerate(spec.steps):
        for field, topic in step.outputs():
            for source in step.input_topics():
                edges.setdefault(source, []).append((topic, ("steps", i, *field)))
    for i, src in enumerate(spec.sources):
        if src.kafka is not None and src.kafka.bootstrap_servers is None:
            edges.setdefault(src.kafka.topic, []).append((src.to, ("sources", i, "to")))
    reported: set[tuple[str | int, ...]] = set()
    for start in list(edges):
        # Depth-first from each topic; a write back to `start` closes a cycle.
        stack, visited = [(start, [start])], {start}
        while stack:
            topic, path = stack.pop()
            for target, loc in edges.get(topic, []):
                if target == start and loc not in reported:
                    reported.add(loc)
                    yield {
                        "type": PydanticCustomError(
                            "topic_cycle",
                            "writes back to its own input: {cycle}",
                            {"cycle": " -> ".join([*path, target])},
                        ),
                        "loc": loc,
                        "input": target,
                    }
                elif target not in visited:
                    visited.add(target)
                    stack.append((target, [*path, target]))


def _expression_errors(step: StepSpec, index: int) -> Iterator[InitErrorDetails]:
    """CEL expressions are compiled here so a typo fails validation, not a worker."""
    import cel

    candidates: list[tuple[tuple[str | int, ...], str]] = []
    if step.filter:
        candidates.append((("steps", index, "filter"), step.filter))
    for field, expr in (step.map or {}).items():
        candidates.append((("steps", index, "map", field), expr))
    if step.latest and step.latest.delete_when:
        candidates.append((("steps", index, "latest", "deleteWhen"), step.latest.delete_when))
    for loc, expr in candidates:
        try:
            cel.compile(expr)
        except (ValueError, RuntimeError) as err:
            first_line = str(err).splitlines()[0]
            yield {
                "type": PydanticCustomError(
                    "cel_syntax", "invalid CEL expression: {error}", {"error": first_line}
                ),
                "loc": loc,
                "input": expr,
            }


class ObjectMeta(SpecModel):
    """The subset of Kubernetes metadata a manifest file carries."""

    model_config = SpecModel.model_config | {"extra": "allow"}

    name: Name
    """The Pipeline's name."""
    namespace: str | None = None
    """Namespace (defaults to the current one)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""


class Pipeline(SpecModel):
    """A whole Pipeline manifest, as written in a YAML file."""

    api_version: Literal["flowmill.dev/v1alpha1"] = Field(alias="apiVersion")
    """Always flowmill.dev/v1alpha1."""
    kind: Literal["Pipeline"]
    """Always Pipeline."""
    metadata: ObjectMeta
    """Name, namespace, labels."""
    spec: PipelineSpec
    """What the Pipeline does."""

    @property
    def name(self) -> str:
        """The Pipeline's name."""
        return self.metadata.name

    def tables(self) -> Iterator[tuple[StepSpec, str]]:
        """Each serving table and the step writing it."""
        for step in self.spec.steps:
            if step.sink and step.sink.redis:
                yield step, step.sink.redis.table
