"""What every renderer module needs to know about one Pipeline, worked out once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flowmill.manifest import FieldError
from flowmill.spec import Pipeline
from flowmill_operator import naming
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
class RenderContext:
    pipeline: Pipeline
    namespace: str
    settings: RenderSettings
    uid: str | None
    """The Pipeline's uid in the cluster; None when rendering a file (no owner refs)."""
    spec_hash: str

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def image(self) -> str:
        return self.pipeline.spec.image or self.settings.image

    @property
    def topic_namespace(self) -> str:
        return self.pipeline.spec.kafka.namespace or self.namespace

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

    def bootstrap_servers(self) -> str:
        kafka = self.pipeline.spec.kafka
        if kafka.bootstrap_servers:
            return kafka.bootstrap_servers
        if kafka.cluster:
            # Strimzi's plain listener; fully qualified when the cluster is elsewhere.
            ns = kafka.namespace or self.namespace
            return f"{kafka.cluster}-kafka-bootstrap.{ns}.svc:9092"
        assert self.settings.default_bootstrap_servers is not None  # checked by preflight()
        return self.settings.default_bootstrap_servers

    def redis_env(self) -> list[Manifest]:
        """FLOWMILL_REDIS_URL as a value or from the Secret the spec names."""
        redis = self.pipeline.spec.redis
        if redis.secret_ref is not None:
            ref = {"name": redis.secret_ref.name, "key": redis.secret_ref.key}
            return [{"name": "FLOWMILL_REDIS_URL", "valueFrom": {"secretKeyRef": ref}}]
        if redis.url:
            return [{"name": "FLOWMILL_REDIS_URL", "value": redis.url}]
        return []


def preflight(pipeline: Pipeline, settings: RenderSettings) -> None:
    """Raise RenderError for what the spec models allow (local runs need none of it) but
    a cluster cannot run: no Kafka address, Redis tables with no Redis, a Service name
    Kubernetes refuses."""
    spec = pipeline.spec
    errors: list[FieldError] = []
    if not (
        spec.kafka.bootstrap_servers or spec.kafka.cluster or settings.default_bootstrap_servers
    ):
        errors.append(
            FieldError(
                "spec.kafka",
                "set cluster (a Strimzi Kafka) or bootstrapServers: workers in a cluster "
                "have no embedded broker",
            )
        )
    has_redis = bool(spec.redis.url or spec.redis.secret_ref)
    for i, step in enumerate(spec.steps):
        if step.sink and step.sink.redis and not has_redis:
            errors.append(
                FieldError(
                    f"spec.steps[{i}].sink.redis",
                    "writes a Redis table but spec.redis sets neither url nor secretRef",
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
