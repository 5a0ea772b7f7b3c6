"""Operator-wide settings: what a platform team chooses once, for every Pipeline.

Each setting comes from a flag of `flowmill operator`, else an environment variable (the
Helm chart sets those), else a default. The renderer only reads the rendering part, so
`flowmill render` accepts the same flags and prints what an operator with them applies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

AutoscalerKind = Literal["hpa", "keda"]
PodMonitorMode = Literal["auto", "always", "never"]
TopicManagementSetting = Literal["auto", "strimzi", "admin", "unmanaged"]
TOPIC_MANAGEMENT_SETTINGS = ("auto", "strimzi", "admin", "unmanaged")

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


@dataclass(frozen=True)
class RenderSettings:
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
    """Render a PodMonitor per Pipeline (the operator decides from PodMonitorMode)."""
    pod_disruption_budgets: bool = False
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
    """Redis for Pipelines whose spec.redis is empty."""


@dataclass(frozen=True)
class OperatorSettings:
    """Everything `flowmill operator` needs: rendering plus how and where it runs."""

    render: RenderSettings = field(default_factory=RenderSettings)
    namespaces: tuple[str, ...] = ()
    """Namespaces (or globs such as `team-*`) whose Pipelines are reconciled; empty: all."""
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
    priority: int | None = None
    """Peering priority; unset picks a random one so replicas never tie."""
    retry_seconds: float = 5.0
    """Delay before a failed reconcile is retried."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def render_settings_from_env(env: Mapping[str, str] | None = None) -> RenderSettings:
    """RenderSettings from FLOWMILL_* variables (defaults for anything unset)."""
    env = os.environ if env is None else env
    base = RenderSettings()
    autoscaler = env.get("FLOWMILL_AUTOSCALER") or base.autoscaler
    if autoscaler not in ("hpa", "keda"):
        raise ValueError(f"FLOWMILL_AUTOSCALER must be hpa or keda, not {autoscaler!r}")
    topics = env.get("FLOWMILL_TOPIC_MANAGEMENT") or base.topic_management
    if topics not in TOPIC_MANAGEMENT_SETTINGS:
        raise ValueError(
            f"FLOWMILL_TOPIC_MANAGEMENT must be one of {', '.join(TOPIC_MANAGEMENT_SETTINGS)}, "
            f"not {topics!r}"
        )
    return RenderSettings(
        image=env.get("FLOWMILL_IMAGE") or base.image,
        topic_management=topics,  # type: ignore[arg-type]
        image_pull_policy=env.get("FLOWMILL_IMAGE_PULL_POLICY") or base.image_pull_policy,  # type: ignore[arg-type]
        strimzi_api_version=env.get("FLOWMILL_STRIMZI_API_VERSION") or base.strimzi_api_version,
        autoscaler=autoscaler,  # type: ignore[arg-type]
        lag_metric=env.get("FLOWMILL_LAG_METRIC") or base.lag_metric,
        hpa_scale_to_zero=_bool(env.get("FLOWMILL_HPA_SCALE_TO_ZERO"), base.hpa_scale_to_zero),
        pod_disruption_budgets=_bool(env.get("FLOWMILL_PDB"), base.pod_disruption_budgets),
        default_kafka_cluster=env.get("FLOWMILL_DEFAULT_KAFKA_CLUSTER") or None,
        default_kafka_namespace=env.get("FLOWMILL_DEFAULT_KAFKA_NAMESPACE") or None,
        default_bootstrap_servers=env.get("FLOWMILL_DEFAULT_BOOTSTRAP_SERVERS") or None,
        default_redis_url=env.get("FLOWMILL_DEFAULT_REDIS_URL") or None,
    )


def operator_settings_from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """OperatorSettings from FLOWMILL_* variables; `flowmill operator` flags override them."""
    env = os.environ if env is None else env
    namespaces = _split(env.get("FLOWMILL_WATCH_NAMESPACES"))
    if namespaces == ("*",):
        namespaces = ()
    mode = env.get("FLOWMILL_POD_MONITORS") or "auto"
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"FLOWMILL_POD_MONITORS must be auto, always or never, not {mode!r}")
    priority = env.get("FLOWMILL_PEERING_PRIORITY")
    return OperatorSettings(
        render=render_settings_from_env(env),
        namespaces=namespaces,
        pod_monitors=mode,  # type: ignore[arg-type]
        resync_seconds=float(env.get("FLOWMILL_RESYNC_SECONDS") or 30.0),
        liveness_endpoint=env.get("FLOWMILL_LIVENESS_ENDPOINT") or None,
        peering=env.get("FLOWMILL_PEERING") or None,
        priority=int(priority) if priority else None,
    )
