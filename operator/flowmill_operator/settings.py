"""Operator-wide settings: what a platform team chooses once, for every Pipeline.

Each setting comes from a flag of `flowmill operator`, else an environment variable
FLOWMILL_<SETTING> (the Helm chart sets those; see flowmill.settings), else a default. The
renderer only reads the rendering part, so `flowmill render` accepts the same flags and
prints what an operator with them applies.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from flowmill.redact import url_password
from flowmill.settings import FlowmillSettings, split_list
from flowmill.spec.launch import API_HEADER_TIMEOUT_S, API_MAX_CONNECTIONS, STOP_GRACE_S

AutoscalerKind = Literal["hpa", "keda"]
PodMonitorMode = Literal["auto", "always", "never"]
TopicManagementSetting = Literal["auto", "strimzi", "admin", "unmanaged"]

STRIMZI_GROUP = "kafka.strimzi.io"
# Strimzi 0.49 added v1 and 1.0 removed every older version; v1beta2 is for older clusters.
DEFAULT_STRIMZI_API_VERSION = f"{STRIMZI_GROUP}/v1"
STRIMZI_API_VERSIONS = (f"{STRIMZI_GROUP}/v1", f"{STRIMZI_GROUP}/v1beta2")


def _package_version() -> str:
    try:
        return version("flowmill")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "latest"


DEFAULT_IMAGE = f"flowmill:{_package_version()}"


class RenderSettings(FlowmillSettings):
    """What shapes the rendered children (and so `flowmill render`'s output)."""

    image: str = DEFAULT_IMAGE
    """Image of workers and API when a Pipeline sets no spec.image."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    strimzi_api_version: str = DEFAULT_STRIMZI_API_VERSION
    topic_management: TopicManagementSetting = "auto"
    """For Pipelines whose spec.kafka.topicManagement is unset: auto is strimzi when a
    Strimzi cluster is named (spec.kafka.cluster or the default), else unmanaged."""
    autoscaler: AutoscalerKind = "hpa"
    """Used by steps whose autoscaling sets no kind."""
    lag_metric: str = "flowmill_consumer_lag"
    """External metric an HPA reads (served by prometheus-adapter from the workers' gauge)."""
    hpa_scale_to_zero: bool = False
    """The cluster enables the HPAScaleToZero feature gate, so an HPA may keep
    minReplicas 0 (otherwise only KEDA scales a step to zero)."""
    pod_monitor: bool = False
    """Render a PodMonitor per Pipeline (`render --pod-monitor`; the operator decides from
    its pod_monitors mode)."""
    pod_disruption_budgets: bool = Field(default=False, validation_alias="FLOWMILL_PDB")
    """Render a PodDisruptionBudget for every step and the API."""
    # Platform defaults for Pipelines whose spec.kafka / spec.redis are empty, as in
    # manifests written for `flowmill run`: the platform team names its Kafka and Redis
    # once, and such a manifest runs on the cluster unchanged.
    default_kafka_cluster: str | None = None
    """Strimzi Kafka resource for Pipelines with an empty spec.kafka."""
    default_kafka_namespace: str | None = None
    """Its namespace (where their KafkaTopics go); unset: the Pipeline's namespace."""
    default_bootstrap_servers: str | None = None
    """Bootstrap servers for them; unset: Strimzi's {cluster}-kafka-bootstrap service."""
    default_redis_url: str | None = None
    """Redis for Pipelines whose spec.redis is empty, without a password (refused: it
    would be rendered into every Deployment); one with a password goes in a Secret,
    named by default_redis_secret."""
    default_redis_secret: str | None = None
    """Secret holding the whole default Redis URL, password included, which the workers
    read through a secretKeyRef: it must exist, under this name, in each Pipeline's
    namespace (a pod reads Secrets of its own namespace only)."""
    default_redis_secret_key: str = "url"
    """The key of that Secret."""
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]")
    """A Prometheus that scrapes the Pipelines' pods (e.g.
    http://prometheus.monitoring.svc:9090), given to every API as
    FLOWMILL_API_PROMETHEUS_URL: the health view reads the workers' rates, lag, replicas and
    restarts from it. Unset: the view shows Kafka's side only (topics, dead letters)."""
    # How every Pipeline's API treats its connections: the platform's load balancers and
    # clients decide these, not one Pipeline (its proxies are spec.api.trustedProxies).
    api_header_timeout_seconds: float = Field(default=API_HEADER_TIMEOUT_S, gt=0, le=3600)
    """The API closes a connection whose request headers are not complete this long after
    it opened or after its previous response (`flowmill api --header-timeout`)."""
    api_max_connections: int = Field(default=API_MAX_CONNECTIONS, ge=1, le=1_000_000)
    """Open connections per API pod; beyond, a newcomer gets 503 (`--max-connections`)."""
    api_stop_grace_seconds: float = Field(default=STOP_GRACE_S, gt=0, le=3600)
    """After SIGTERM, how long the API's open requests and streams may last
    (`--stop-grace`); its pods' terminationGracePeriodSeconds is this plus the slack."""

    @field_validator("default_redis_url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value and url_password(value) is not None:
            raise ValueError(
                "carries a password, which would be rendered into every worker Deployment: "
                "put the URL in a Secret and name it in FLOWMILL_DEFAULT_REDIS_SECRET "
                "(chart: redis.defaultUrlSecret)"
            )
        return value

    @field_validator("prometheus_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value and url_password(value) is not None:
            raise ValueError(
                "carries a password, which would be rendered into every API Deployment: "
                "give the API a Prometheus (or a proxy) that needs none"
            )
        return value


class OperatorSettings(FlowmillSettings):
    """Everything `flowmill operator` needs: rendering plus how and where it runs."""

    render: RenderSettings = Field(default_factory=RenderSettings.from_env)
    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="FLOWMILL_WATCH_NAMESPACES"
    )
    """Namespaces (or globs such as `team-*`) whose Pipelines are reconciled; empty (or
    `*`): all. The variable is comma-separated."""
    pod_monitors: PodMonitorMode = "auto"
    """auto: a PodMonitor per Pipeline when the cluster serves the CRD."""
    resync_seconds: float = 30.0
    """Period of the timer that re-applies drifted children and refreshes status."""
    kubeconfig: str | None = None
    """Kubeconfig file (--kubeconfig); unset: the in-cluster service account, else
    $KUBECONFIG or ~/.kube/config, as kubectl does."""
    liveness_endpoint: str | None = None
    """e.g. http://0.0.0.0:8080/healthz (what the chart's livenessProbe calls)."""
    peering: str | None = None
    """Kopf peering name; unset runs standalone. Replicas with the same name elect one."""
    priority: int | None = Field(default=None, validation_alias="FLOWMILL_PEERING_PRIORITY")
    """Peering priority; unset picks a random one so replicas never tie."""
    retry_seconds: float = 5.0
    """Delay before a failed reconcile is retried."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _namespace_list(cls, value: object) -> object:
        value = split_list(value)
        return () if value == ("*",) else value

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
