"""The Pipeline resource: the single source of truth for the CRD schema, the operator's
validation, and what workers and the API read."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from flowmill.redact import url_password
from flowmill.spec.common import Name, SecretKeyRef, SpecModel, TopicName, cel_rule
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
    security: KafkaSecurity | None = None
    """How workers authenticate to Kafka and encrypt the connection (TLS, SASL); unset:
    PLAINTEXT. Credentials come only from Secrets in the Pipeline's namespace."""


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def _field_error(
    loc: tuple[str | int, ...], kind: str, message: str, value: Any
) -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}


class KafkaTls(SpecModel):
    """TLS to the brokers: whom to trust, and an optional client certificate (mTLS)."""

    ca_secret_ref: SecretKeyRef | None = None
    """PEM CA certificate(s) that signed the brokers' certificates (Strimzi:
    {cluster}-cluster-ca-cert, key ca.crt); unset: the system's trust store (MSK and
    Confluent Cloud brokers have publicly trusted certificates)."""
    cert_secret_ref: SecretKeyRef | None = None
    """PEM client certificate for mutual TLS (Strimzi KafkaUser type tls: user.crt)."""
    key_secret_ref: SecretKeyRef | None = None
    """PEM private key of that certificate (Strimzi: user.key)."""
    insecure_skip_verify: bool = False
    """Always refused: without verifying the broker's certificate anyone on the path can
    pose as the broker and read the data and the SASL password. Give caSecretRef instead."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        errors: list[InitErrorDetails] = []
        if self.insecure_skip_verify:
            errors.append(
                _field_error(
                    ("insecureSkipVerify",),
                    "insecure_tls",
                    "refused: an unverified broker certificate lets anyone on the path pose "
                    "as the broker and read the data and the password; put the CA that "
                    "signed the brokers' certificates in a Secret and name it in caSecretRef",
                    True,
                )
            )
        if (self.cert_secret_ref is None) != (self.key_secret_ref is None):
            missing = "keySecretRef" if self.key_secret_ref is None else "certSecretRef"
            errors.append(
                _field_error(
                    (missing,),
                    "mtls_pair",
                    "a client certificate needs both certSecretRef and keySecretRef",
                    None,
                )
            )
        if errors:
            raise ValidationError.from_exception_data("KafkaTls", errors)
        return self


class KafkaSasl(SpecModel):
    """SASL credentials: a user name (literal or from a Secret) and a password from a
    Secret. A literal password is refused: it would sit in the spec, readable by anyone
    who can read the Pipeline."""

    mechanism: SaslMechanism
    """PLAIN (Confluent Cloud API keys), SCRAM-SHA-256 or SCRAM-SHA-512 (MSK, Strimzi)."""
    username: str | None = Field(default=None, min_length=1, max_length=253)
    """The user name (not a secret)."""
    username_secret_ref: SecretKeyRef | None = None
    """A Secret key holding the user name instead."""
    password_secret_ref: SecretKeyRef
    """The Secret key holding the password."""

    @model_validator(mode="before")
    @classmethod
    def _no_literal_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValidationError.from_exception_data(
                "KafkaSasl",
                [
                    _field_error(
                        ("password",),
                        "literal_password",
                        "a literal password is refused: put it in a Secret and name it in "
                        "passwordSecretRef",
                        "***",
                    )
                ],
            )
        return data

    @model_validator(mode="after")
    def _one_username(self) -> Self:
        if (self.username is None) == (self.username_secret_ref is None):
            raise ValidationError.from_exception_data(
                "KafkaSasl",
                [
                    _field_error(
                        ("username",),
                        "one_username",
                        "set username or usernameSecretRef (exactly one)",
                        self.username,
                    )
                ],
            )
        return self


class KafkaSecurity(SpecModel):
    """The security protocol and its credentials; `kafkaUser` takes them from the Secret
    Strimzi's user operator makes for a KafkaUser of that name."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!has(self.tls) || (has(self.protocol) && "
                    "(self.protocol == 'SSL' || self.protocol == 'SASL_SSL'))",
                    "tls needs protocol SSL or SASL_SSL",
                    ".tls",
                ),
                cel_rule(
                    "!has(self.sasl) || (has(self.protocol) && "
                    "(self.protocol == 'SASL_PLAINTEXT' || self.protocol == 'SASL_SSL'))",
                    "sasl needs protocol SASL_PLAINTEXT or SASL_SSL",
                    ".sasl",
                ),
                cel_rule(
                    "!has(self.protocol) || "
                    "!(self.protocol == 'SASL_PLAINTEXT' || self.protocol == 'SASL_SSL') || "
                    "has(self.sasl) || has(self.kafkaUser)",
                    "a SASL protocol needs sasl or kafkaUser",
                    ".sasl",
                ),
            ]
        }
    }

    protocol: KafkaProtocol = "PLAINTEXT"
    """PLAINTEXT, SSL (TLS, optionally with a client certificate), SASL_PLAINTEXT, or
    SASL_SSL (SASL over TLS: MSK SCRAM, Confluent Cloud, Strimzi scram-sha-512)."""
    tls: KafkaTls | None = None
    """TLS settings of SSL and SASL_SSL."""
    sasl: KafkaSasl | None = None
    """SASL settings of SASL_PLAINTEXT and SASL_SSL."""
    kafka_user: Name | None = None
    """A Strimzi KafkaUser in the Pipeline's namespace: with protocol SSL its Secret's
    user.crt and user.key (authentication type tls), with SASL_* the user name and the
    Secret's password key as SCRAM-SHA-512 (type scram-sha-512). The brokers' CA is
    Strimzi's {cluster}-cluster-ca-cert (key ca.crt) unless tls.caSecretRef says otherwise."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        errors = list(self._errors())
        if errors:
            raise ValidationError.from_exception_data("KafkaSecurity", errors)
        return self

    def _errors(self) -> Iterator[InitErrorDetails]:
        protocol = self.protocol
        if self.tls is not None and protocol not in TLS_PROTOCOLS:
            yield _field_error(
                ("tls",),
                "tls_without_tls",
                f"TLS settings with protocol {protocol}: use SSL or SASL_SSL, or remove tls",
                None,
            )
        if self.sasl is not None and protocol not in SASL_PROTOCOLS:
            yield _field_error(
                ("sasl",),
                "sasl_without_sasl",
                f"SASL settings with protocol {protocol}: use SASL_PLAINTEXT or SASL_SSL, "
                "or remove sasl",
                None,
            )
        if protocol in SASL_PROTOCOLS and self.sasl is None and self.kafka_user is None:
            yield _field_error(
                ("sasl",),
                "sasl_missing",
                f"protocol {protocol} needs sasl (mechanism, username, passwordSecretRef) "
                "or kafkaUser",
                None,
            )
        if self.kafka_user is not None:
            if protocol == "PLAINTEXT":
                yield _field_error(
                    ("kafkaUser",),
                    "kafka_user_plaintext",
                    "kafkaUser with protocol PLAINTEXT authenticates nothing: use SSL (type "
                    "tls) or SASL_SSL (type scram-sha-512)",
                    self.kafka_user,
                )
            if self.sasl is not None:
                yield _field_error(
                    ("sasl",),
                    "kafka_user_sasl",
                    "kafkaUser supplies the SASL credentials: remove sasl",
                    None,
                )
            if self.tls is not None and self.tls.cert_secret_ref is not None:
                yield _field_error(
                    ("tls", "certSecretRef"),
                    "kafka_user_cert",
                    "kafkaUser supplies the client certificate: remove certSecretRef and "
                    "keySecretRef",
                    None,
                )


class RedisTls(SpecModel):
    """TLS to Redis (a rediss:// URL): whom to trust, and an optional client certificate.
    Each file is a Secret key the operator mounts read-only into the pods."""

    ca_secret_ref: SecretKeyRef | None = None
    """PEM CA certificate(s) that signed the server's certificate; unset: the system's
    trust store (managed Redis with a publicly trusted certificate)."""
    cert_secret_ref: SecretKeyRef | None = None
    """PEM client certificate, for a server with tls-auth-clients (mutual TLS)."""
    key_secret_ref: SecretKeyRef | None = None
    """PEM private key of that certificate."""

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_secret_ref is None) != (self.key_secret_ref is None):
            missing = "keySecretRef" if self.key_secret_ref is None else "certSecretRef"
            raise ValidationError.from_exception_data(
                "RedisTls",
                [
                    _field_error(
                        (missing,),
                        "mtls_pair",
                        "a client certificate needs both certSecretRef and keySecretRef",
                        None,
                    )
                ],
            )
        return self


REDIS_URL_PASSWORD_REFUSED = (
    "carries a password: a Pipeline's spec is readable by anyone who can read the "
    "Pipeline and is copied into its ConfigMap; put the password in a Secret and name it "
    "in passwordSecretRef (with a password-less url, e.g. redis://user@host:6379/0 for an "
    "ACL user), or put the whole URL in a Secret and name it in secretRef"
)


class RedisConnection(SpecModel):
    """The Redis server that holds serving tables. Credentials come only from Secrets:
    a url with a password is refused."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!(has(self.url) && has(self.secretRef))", "set url or secretRef, not both"
                ),
                cel_rule(
                    "!has(self.url) || !self.url.matches('^rediss?://[^/?#@]*:[^/?#@]*@')",
                    f"spec.redis.url {REDIS_URL_PASSWORD_REFUSED}",
                    ".url",
                ),
                cel_rule(
                    "!has(self.passwordSecretRef) || !has(self.secretRef)",
                    "secretRef holds the whole URL, password included: remove passwordSecretRef",
                    ".passwordSecretRef",
                ),
                cel_rule(
                    "!has(self.tls) || !has(self.url) || self.url.startsWith('rediss://')",
                    "tls needs a rediss:// url",
                    ".tls",
                ),
            ]
        }
    }

    url: str | None = Field(default=None, pattern=r"^rediss?://", max_length=1000)
    """redis://host:port/db (rediss:// for TLS), without a password; redis://user@host
    names an ACL user whose password is in passwordSecretRef."""
    secret_ref: SecretKeyRef | None = None
    """A Secret key holding the whole URL, password included."""
    password_secret_ref: SecretKeyRef | None = None
    """A Secret key holding the password (of the ACL user the url names, else of
    `default`, as requirepass sets it); with url, or with the operator's default Redis."""
    tls: RedisTls | None = None
    """CA and client certificate for a rediss:// server."""

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and url_password(value) is not None:
            raise PydanticCustomError("password_in_url", REDIS_URL_PASSWORD_REFUSED)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        errors: list[InitErrorDetails] = []
        if self.url is not None and self.secret_ref is not None:
            errors.append(
                _field_error((), "url_and_secret", "set url or secretRef, not both", None)
            )
        if self.password_secret_ref is not None and self.secret_ref is not None:
            errors.append(
                _field_error(
                    ("passwordSecretRef",),
                    "password_and_secret",
                    "secretRef holds the whole URL, password included: remove passwordSecretRef",
                    None,
                )
            )
        if self.tls is not None and self.url is not None and not self.url.startswith("rediss://"):
            errors.append(
                _field_error(("tls",), "tls_without_rediss", "tls needs a rediss:// url", None)
            )
        if errors:
            raise ValidationError.from_exception_data("RedisConnection", errors)
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


def _proxy_network(entry: str) -> str:
    try:
        ipaddress.ip_network(entry, strict=True)
    except ValueError as err:
        raise ValueError(
            f"{entry!r} is not an IP address or a network in CIDR notation ({err})"
        ) from None
    return entry


ProxyNetwork = Annotated[str, Field(min_length=2, max_length=43), AfterValidator(_proxy_network)]
"""An address (`10.0.0.7`) or network without host bits (`10.244.0.0/16`, `fd00::/8`)."""


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
    trusted_proxies: list[ProxyNetwork] = Field(default_factory=list, max_length=50)
    """Addresses or networks (CIDRs such as `10.244.0.0/16`, the ingress controller's
    pod CIDR) of the proxies in front of the API: from them, X-Forwarded-For names the
    client (the right-most address outside these), which the rate limit is keyed by.
    Unset: the socket's peer is the client, whatever a request claims. It depends on
    how this API is exposed, so it belongs to the Pipeline."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the API's Service."""
    template: PodTemplate | None = None
    """Volumes, env, resources and placement of the API's pods, merged over
    spec.template."""


class ReplayRequest(SpecModel):
    """Recompute one step from a time or an offset of its input (docs/replay.md). The
    operator holds the step at zero workers, resets its positions and table in a Job, and
    scales it back; status.replay reports the progress. A request is acted on once per
    id: to replay again, give a new id."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "has(self.from) != has(self.fromOffset)",
                    "a replay starts at one place: set from or fromOffset",
                    ".from",
                ),
            ]
        }
    }

    id: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Names this request; the operator replays once per id (status.replay.id says which
    it last acted on), so repeating a replay is a new id, never an accident."""
    step: Name
    """The step to recompute (not a correlate, Parquet or Faust step)."""
    from_: AwareDatetime | None = Field(default=None, alias="from")
    """From the first record at or after this time (RFC 3339, by Kafka record time) in
    each input partition."""
    from_offset: int | None = Field(default=None, ge=0)
    """Or from this offset of every input partition (within what Kafka still holds)."""

    @model_validator(mode="after")
    def _one_start(self) -> Self:
        if (self.from_ is None) == (self.from_offset is None):
            raise ValueError("a replay starts at one place: set from or fromOffset")
        return self


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
                    "self.steps.all(s, !has(s.lookup) || !has(s.lookup.topic) || "
                    "self.topics.exists(t, t.name == s.lookup.topic))",
                    "spec.steps[].lookup.topic must name a topic declared in spec.topics",
                    ".steps",
                ),
                cel_rule(
                    "!has(self.steps) || "
                    "self.steps.all(s, !has(s.sink) || !has(s.sink.kafka) || "
                    "self.topics.exists(t, t.name == s.sink.kafka.topic))",
                    "spec.steps[].sink.kafka.topic must name a topic declared in spec.topics",
                    ".steps",
                ),
                cel_rule(
                    "!has(self.steps) || "
                    "self.steps.all(s, !has(s.faust) || !has(s.faust.outputs) || "
                    "s.faust.outputs.all(k, self.topics.exists(t, t.name == s.faust.outputs[k])))",
                    "spec.steps[].faust.outputs must name topics declared in spec.topics",
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
    paused: bool | None = None
    """true pauses the Pipeline: on a cluster every source and step Deployment scales to zero
    (autoscalers removed meanwhile), locally the workers stop; positions are kept (they
    are durable with the results), so setting it back to false continues exactly where
    each part stopped. The API keeps serving. Status phase says Paused. Unset: false."""
    replay: ReplayRequest | None = None
    """Recompute one step from a time or an offset (cluster only; `flowmill replay` does it
    for a local run). Removing it after it finished changes nothing."""
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
            if step.lookup is not None:
                yield from self._lookup_errors(step, i, declared)
            if step.sink and step.sink.kafka and step.sink.kafka.topic not in declared:
                yield missing(("steps", i, "sink", "kafka", "topic"), step.sink.kafka.topic)
            for name, output in (step.faust.outputs if step.faust else {}).items():
                if output not in declared:
                    yield missing(("steps", i, "faust", "outputs", name), output)
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
        if self.replay is not None and self.replay.step not in {s.name for s in self.steps}:
            yield {
                "type": PydanticCustomError(
                    "unknown_step", "no step named '{step}' to replay", {"step": self.replay.step}
                ),
                "loc": ("replay", "step"),
                "input": self.replay.step,
            }

    def _lookup_errors(
        self, step: StepSpec, index: int, declared: set[str]
    ) -> Iterator[InitErrorDetails]:
        assert step.lookup is not None
        lookup = step.lookup
        if lookup.topic is not None:
            if lookup.topic not in declared:
                yield {
                    "type": PydanticCustomError(
                        "undeclared_topic",
                        "topic '{topic}' is not declared in spec.topics",
                        {"topic": lookup.topic},
                    ),
                    "loc": ("steps", index, "lookup", "topic"),
                    "input": lookup.topic,
                }
            return
        owner = self.table_step(str(lookup.table))
        problem = None
        if owner is None:
            latest = [t for t, s in self._tables() if s.latest is not None]
            problem = "no step of this Pipeline writes a table '{table}'" + (
                f" (latest-state tables: {', '.join(latest)})" if latest else ""
            )
        elif owner.latest is None:
            problem = "table '{table}' is not a latest-state table (its step has no latest)"
        elif owner.correlate is not None:
            problem = "table '{table}' is written by a join (correlate): look up its topics"
        elif owner.lookup is not None:
            problem = "table '{table}' is written by a step with a lookup of its own"
        elif owner.name == step.name:
            problem = "a step cannot look up its own table '{table}'"
        if problem is not None:
            yield {
                "type": PydanticCustomError("lookup_table", problem, {"table": lookup.table}),
                "loc": ("steps", index, "lookup", "table"),
                "input": lookup.table,
            }

    def _tables(self) -> Iterator[tuple[str, StepSpec]]:
        for step in self.steps:
            if step.sink and step.sink.redis:
                yield step.sink.redis.table, step

    def table_step(self, table: str) -> StepSpec | None:
        """The step writing serving table `table`, if any."""
        return next((s for t, s in self._tables() if t == table), None)

    def lookup_reference(self, step: StepSpec) -> tuple[str, StepSpec | None]:
        """What a step's lookup reads: the topic, and the latest-state step whose
        processing turns that topic into the table (None for a reference topic)."""
        if step.lookup is None:
            raise ValueError(f"step {step.name} has no lookup")
        if step.lookup.topic is not None:
            return step.lookup.topic, None
        owner = self.table_step(str(step.lookup.table))
        if owner is None:
            raise KeyError(step.lookup.table)
        return owner.from_, owner

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
