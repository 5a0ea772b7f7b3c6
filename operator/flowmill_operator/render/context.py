"""What every renderer module needs to know about one Pipeline, worked out once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flowmill.manifest import FieldError
from flowmill.spec import ENV_REDIS_URL, Pipeline, strimzi_bootstrap_servers
from flowmill.spec.launch import ENV_REDIS_PASSWORD, REDIS_TLS_FILES, REDIS_TLS_MOUNT
from flowmill.spec.pipeline import TopicManagement
from flowmill_operator import naming
from flowmill_operator.render.kafka_security import PodKafkaSecurity, resolve
from flowmill_operator.settings import RenderSettings

Manifest = dict[str, Any]

# A Service name is a DNS-1035 label: it must start with a letter.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RenderError(ValueError):
    """The Pipeline is valid on its own but cannot become children (e.g. no Kafka to
    point workers at); `errors` names the fields, like PipelineInvalid."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class KafkaTarget:
    """Where a Pipeline's topics live and how workers reach them: its own spec.kafka, or
    the operator's platform default when spec.kafka is empty (so a manifest written for
    `flowmill run` also runs on a cluster)."""

    cluster: str | None
    """Strimzi Kafka resource, if there is one."""
    namespace: str
    """Namespace of the KafkaTopics."""
    bootstrap_servers: str | None
    topic_management: TopicManagement
    """strimzi: KafkaTopics; admin: the operator through the Kafka admin API; unmanaged:
    the topics must exist."""


def kafka_target(pipeline: Pipeline, namespace: str, settings: RenderSettings) -> KafkaTarget:
    kafka = pipeline.spec.kafka
    if kafka.cluster or kafka.bootstrap_servers:
        cluster, topic_ns, servers = kafka.cluster, kafka.namespace, kafka.bootstrap_servers
    else:
        cluster = settings.default_kafka_cluster
        topic_ns = settings.default_kafka_namespace
        servers = settings.default_bootstrap_servers
    topic_ns = topic_ns or namespace
    if servers is None and cluster:
        servers = strimzi_bootstrap_servers(cluster, topic_ns)
    mode = kafka.topic_management
    if mode is None and settings.topic_management != "auto":
        mode = settings.topic_management
    if mode is None:
        mode = "strimzi" if cluster else "unmanaged"
    return KafkaTarget(cluster, topic_ns, servers, mode)


@dataclass(frozen=True)
class RenderContext:
    pipeline: Pipeline
    namespace: str
    settings: RenderSettings
    uid: str | None
    """The Pipeline's uid in the cluster; None when rendering a file (no owner refs)."""
    spec_hash: str
    replaying: str | None = None
    """The step spec.replay holds at zero while its reset Job runs; None when there is no
    request or the operator has finished it (status.replay)."""

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def image(self) -> str:
        return self.pipeline.spec.image or self.settings.image

    @property
    def kafka(self) -> KafkaTarget:
        return kafka_target(self.pipeline, self.namespace, self.settings)

    def metadata(
        self,
        name: str,
        component: str,
        child: str | None = None,
        *,
        namespace: str | None = None,
        extra_labels: dict[str, str] | None = None,
    ) -> Manifest:
        """Metadata of a child; owner references only where garbage collection reaches
        (the same namespace), which is why cross-namespace topics need a finalizer."""
        namespace = namespace or self.namespace
        meta: Manifest = {
            "name": name,
            "namespace": namespace,
            "labels": {
                **naming.labels(self.name, component, child),
                naming.PIPELINE_NAMESPACE_LABEL: self.namespace,
                **(extra_labels or {}),
            },
        }
        if self.uid and namespace == self.namespace:
            meta["ownerReferences"] = [naming.owner_reference(self.name, self.uid)]
        return meta

    @property
    def kafka_security(self) -> PodKafkaSecurity | None:
        """spec.kafka.security as pod env and files (None: PLAINTEXT)."""
        return resolve(self.pipeline, self.kafka.cluster)[0]

    def bootstrap_servers(self) -> str:
        servers = self.kafka.bootstrap_servers
        assert servers is not None  # checked by preflight()
        return servers

    def redis_env(self) -> list[Manifest]:
        """The Redis variables: the URL (a password-less value, or a Secret's), the
        password from its Secret, the paths of the TLS files in redis_tls_volume. A
        credential is always a secretKeyRef, never a value."""
        redis = self.pipeline.spec.redis
        settings = self.settings
        env: list[Manifest] = []
        if redis.secret_ref is not None:
            env.append(_secret_env(ENV_REDIS_URL, redis.secret_ref.name, redis.secret_ref.key))
        elif redis.url:
            env.append({"name": ENV_REDIS_URL, "value": redis.url})
        elif settings.default_redis_secret:
            key = settings.default_redis_secret_key
            env.append(_secret_env(ENV_REDIS_URL, settings.default_redis_secret, key))
        elif settings.default_redis_url:
            env.append({"name": ENV_REDIS_URL, "value": settings.default_redis_url})
        if redis.password_secret_ref is not None:
            ref = redis.password_secret_ref
            env.append(_secret_env(ENV_REDIS_PASSWORD, ref.name, ref.key))
        for variable, file in self._redis_tls_files():
            env.append({"name": variable, "value": f"{REDIS_TLS_MOUNT}/{file}"})
        return env

    def redis_tls_volume(self) -> tuple[list[Manifest], list[Manifest]]:
        """The volume (and its mount) holding spec.redis.tls's Secret keys as the files
        REDIS_TLS_FILES names; nothing without tls."""
        tls = self.pipeline.spec.redis.tls
        if tls is None or not self._redis_tls_files():
            return [], []
        refs = (tls.ca_secret_ref, tls.cert_secret_ref, tls.key_secret_ref)
        sources = [
            {"secret": {"name": ref.name, "items": [{"key": ref.key, "path": file}]}}
            for ref, file in zip(refs, REDIS_TLS_FILES.values(), strict=True)
            if ref is not None
        ]
        # Projected: the three keys may live in different Secrets. 0440: readable by the
        # pod's group (its fsGroup) only, as befits a private key.
        volume = {"name": "redis-tls", "projected": {"sources": sources, "defaultMode": 0o440}}
        mount = {"name": "redis-tls", "mountPath": REDIS_TLS_MOUNT, "readOnly": True}
        return [volume], [mount]

    def _redis_tls_files(self) -> list[tuple[str, str]]:
        tls = self.pipeline.spec.redis.tls
        if tls is None:
            return []
        refs = (tls.ca_secret_ref, tls.cert_secret_ref, tls.key_secret_ref)
        return [
            (variable, file)
            for ref, (variable, file) in zip(refs, REDIS_TLS_FILES.items(), strict=True)
            if ref is not None
        ]


def _secret_env(variable: str, secret: str, key: str) -> Manifest:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def preflight(pipeline: Pipeline, settings: RenderSettings) -> None:
    """Raise RenderError for what the spec models allow (local runs need none of it) but
    a cluster cannot run: no Kafka address, Redis tables with no Redis, a Service name
    Kubernetes refuses."""
    spec = pipeline.spec
    errors: list[FieldError] = []
    if kafka_target(pipeline, "default", settings).bootstrap_servers is None:
        errors.append(
            FieldError(
                "spec.kafka",
                "set cluster (a Strimzi Kafka) or bootstrapServers, or give the operator a "
                "default Kafka: workers in a cluster have no embedded broker",
            )
        )
    target = kafka_target(pipeline, "default", settings)
    errors += resolve(pipeline, target.cluster)[1]
    if target.topic_management == "strimzi" and not target.cluster:
        errors.append(
            FieldError(
                "spec.kafka.cluster",
                "topics managed by Strimzi need the Strimzi Kafka resource's name (or set "
                "topicManagement: admin to create them through the Kafka admin API)",
            )
        )
    has_redis = bool(
        spec.redis.url
        or spec.redis.secret_ref
        or settings.default_redis_url
        or settings.default_redis_secret
    )
    for i, step in enumerate(spec.steps):
        if step.sink and step.sink.redis and not has_redis:
            errors.append(
                FieldError(
                    f"spec.steps[{i}].sink.redis",
                    "writes a Redis table but spec.redis sets neither url nor secretRef",
                )
            )
    autoscaler = pipeline.metadata.annotations.get(naming.AUTOSCALER_ANNOTATION)
    if autoscaler is not None and autoscaler.strip() not in ("hpa", "keda"):
        errors.append(
            FieldError(
                f"metadata.annotations[{naming.AUTOSCALER_ANNOTATION}]",
                f"must be hpa or keda (got {autoscaler!r})",
            )
        )
    if spec.api.enabled and not _DNS_1035.match(naming.api_deployment(pipeline.name)):
        errors.append(
            FieldError(
                "metadata.name",
                "must start with a letter: it names the API Service, a DNS-1035 label",
            )
        )
    if errors:
        raise RenderError(errors)
