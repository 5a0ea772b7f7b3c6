"""Autoscalers: an HPA (or a KEDA ScaledObject) per step on consumer lag, and a CPU HPA
for the API.

The step HPA reads External metrics that prometheus-adapter serves (the rules ship with
the chart, charts/flowmill/files/prometheus-adapter-values.yaml), selected by pipeline
and step. With a target of type AverageValue the HPA proposes ceil(metric / target)
replicas whatever the current count, so:

- the lag metric (total messages behind) over lagPerReplica gives
  desired = ceil(lag / lagPerReplica);
- the catch-up metric (seconds one worker needs for the backlog at the observed
  per-worker rate, a recording rule) over targetCatchUpSeconds gives
  desired = ceil(lag / (rate per worker x targetCatchUpSeconds)).

With both, the HPA takes the larger proposal; maxReplicas (capped at the partitions)
and minReplicas bound it.
"""

from __future__ import annotations

from flowmill.spec import StepAutoscaling, StepSpec, consumer_group
from flowmill.spec.launch import (
    ENV_KAFKA_CA_FILE,
    ENV_KAFKA_CERT_FILE,
    ENV_KAFKA_KEY_FILE,
    ENV_KAFKA_SASL_USERNAME,
)
from flowmill.spec.pipeline import SASL_PROTOCOLS, TLS_PROTOCOLS
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext
from flowmill_operator.render.kafka_security import PodKafkaSecurity
from flowmill_operator.render.scaling import StepScale

CATCH_UP_METRIC = "flowmill_step_catchup_seconds"
"""External metric of the catch-up target, as the chart's adapter rules name it."""
# Scale up at once (lag is the signal to act on): double, or add 4 pods, every 15 s,
# whichever is more.
SCALE_UP: Manifest = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15},
        {"type": "Pods", "value": 4, "periodSeconds": 15},
    ],
}
# Scale down only after the step's quiet window and by half per minute at most: a
# rebalance costs every member a pause, so flapping is worse than a few idle workers.
SCALE_DOWN_POLICIES: list[Manifest] = [{"type": "Percent", "value": 50, "periodSeconds": 60}]
API_BEHAVIOR: Manifest = {
    "scaleUp": {"stabilizationWindowSeconds": 0},
    "scaleDown": {"stabilizationWindowSeconds": 300},
}
KEDA_API_VERSION = "keda.sh/v1alpha1"
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
"""spec.kafka.security.sasl.mechanism as KEDA's kafka scaler names it (its `sasl`)."""
KEDA_TLS_PARAMETERS = {
    ENV_KAFKA_CA_FILE: "ca",
    ENV_KAFKA_CERT_FILE: "cert",
    ENV_KAFKA_KEY_FILE: "key",
}
"""The worker's TLS files as the kafka scaler's authentication parameters: it takes the
PEM text itself, so each comes from the same Secret key the worker's file is mounted from."""


def step_behavior(auto: StepAutoscaling) -> Manifest:
    return {
        "scaleUp": SCALE_UP,
        "scaleDown": {
            "stabilizationWindowSeconds": auto.scale_down_seconds(),
            "selectPolicy": "Min",
            "policies": SCALE_DOWN_POLICIES,
        },
    }


def step_autoscaler(ctx: RenderContext, step: StepSpec, scale: StepScale) -> list[Manifest]:
    """The step's HPA, or its ScaledObject (after the TriggerAuthentication it names when
    Kafka is secured); nothing for a fixed replica count."""
    if scale.autoscaler == "hpa":
        return [_step_hpa(ctx, step, scale)]
    if scale.autoscaler == "keda":
        auth = _trigger_authentication(ctx, step)
        return [*([auth] if auth else []), _scaled_object(ctx, step, scale, auth)]
    return []


def _target(name: str) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def _step_hpa(ctx: RenderContext, step: StepSpec, scale: StepScale) -> Manifest:
    assert step.autoscaling is not None
    auto = step.autoscaling
    name = naming.step_deployment(ctx.name, step.name)
    selector = {"matchLabels": {"pipeline": ctx.name, "step": step.name}}

    def external(metric: str, per_replica: int) -> Manifest:
        return {
            "type": "External",
            "external": {
                "metric": {"name": metric, "selector": selector},
                "target": {"type": "AverageValue", "averageValue": str(per_replica)},
            },
        }

    metrics = [external(ctx.settings.lag_metric, auto.lag_per_replica)]
    if auto.target_catch_up_seconds is not None:
        metrics.append(external(CATCH_UP_METRIC, auto.target_catch_up_seconds))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(name, "step", step.name),
        "spec": {
            "scaleTargetRef": _target(name),
            "minReplicas": scale.replicas,
            "maxReplicas": scale.max_replicas,
            "metrics": metrics,
            "behavior": step_behavior(auto),
        },
    }


def _keda_security(pod: PodKafkaSecurity | None) -> Manifest:
    """The kafka trigger's metadata for spec.kafka.security: `tls` and `sasl` say which,
    never with what (that is the TriggerAuthentication's)."""
    if pod is None:
        return {}
    out: Manifest = {}
    if pod.protocol in TLS_PROTOCOLS:
        out["tls"] = "enable"
    if pod.protocol in SASL_PROTOCOLS and pod.mechanism:
        out["sasl"] = KEDA_SASL[pod.mechanism]
    return out


def _trigger_authentication(ctx: RenderContext, step: StepSpec) -> Manifest | None:
    """KEDA's kafka scaler connects to Kafka itself, so it needs the workers' credentials:
    a TriggerAuthentication naming the same Secret keys the step's pods get (secretTargetRef;
    KEDA reads them, the ScaledObject holds no credential). A literal user name (spec's
    sasl.username, a Strimzi KafkaUser's name) is in no Secret: KEDA takes it from the
    worker container's own variable (env). None for PLAINTEXT."""
    pod = ctx.kafka_security
    if pod is None:
        return None
    refs: list[Manifest] = []
    env: list[Manifest] = []

    def ref(parameter: str, name: str, key: str) -> None:
        refs.append({"parameter": parameter, "name": name, "key": key})

    if pod.username_ref is not None:
        ref("username", pod.username_ref.name, pod.username_ref.key)
    elif pod.username:
        env.append(
            {
                "parameter": "username",
                "name": ENV_KAFKA_SASL_USERNAME,
                "containerName": naming.WORKER_CONTAINER,
            }
        )
    if pod.password_ref is not None:
        ref("password", pod.password_ref.name, pod.password_ref.key)
    for variable, secret in pod.files.items():
        ref(KEDA_TLS_PARAMETERS[variable], secret.name, secret.key)
    spec: Manifest = {}
    if refs:
        spec["secretTargetRef"] = refs
    if env:
        spec["env"] = env
    if not spec:
        return None  # TLS with the system's CAs and no client certificate: nothing to pass
    name = naming.step_deployment(ctx.name, step.name)
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "TriggerAuthentication",
        "metadata": ctx.metadata(name, "step", step.name),
        "spec": spec,
    }


def _scaled_object(
    ctx: RenderContext, step: StepSpec, scale: StepScale, auth: Manifest | None
) -> Manifest:
    """KEDA reads the consumer group's lag from Kafka itself (no Prometheus needed) and
    can scale a step to zero: its default activationLagThreshold (0) wakes the step as
    soon as one message waits."""
    auto = step.autoscaling
    assert auto is not None
    name = naming.step_deployment(ctx.name, step.name)
    triggers: list[Manifest] = [
        {
            "type": "kafka",
            "metadata": {
                "bootstrapServers": ctx.bootstrap_servers(),
                "consumerGroup": consumer_group(ctx.name, step.name),
                "topic": topic,
                "lagThreshold": str(auto.lag_per_replica),
                "offsetResetPolicy": "earliest",
                # Partitions cap the replicas already; idle consumers would only wait.
                "allowIdleConsumers": "false",
                **_keda_security(ctx.kafka_security),
            },
            **({"authenticationRef": {"name": auth["metadata"]["name"]}} if auth else {}),
        }
        for topic in step.input_topics()
    ]
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": ctx.metadata(name, "step", step.name),
        "spec": {
            "scaleTargetRef": _target(name),
            "minReplicaCount": scale.replicas,
            "maxReplicaCount": scale.max_replicas,
            "pollingInterval": 15,
            # From the last active trigger to scaling to zero (minReplicaCount 0 only).
            "cooldownPeriod": auto.scale_down_seconds(),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": step_behavior(auto)}},
            "triggers": triggers,
        },
    }


def api_hpa(ctx: RenderContext) -> Manifest | None:
    auto = ctx.pipeline.spec.api.autoscaling
    if auto is None:
        return None
    name = naming.api_deployment(ctx.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(name, "api"),
        "spec": {
            "scaleTargetRef": _target(name),
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": auto.cpu},
                    },
                }
            ],
            "behavior": API_BEHAVIOR,
        },
    }
