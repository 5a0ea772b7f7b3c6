"""Autoscalers: an HPA (or a KEDA ScaledObject) per step on consumer lag, and a CPU HPA
for the API.

The step HPA reads an External metric, the workers' flowmill_consumer_lag gauge as
prometheus-adapter serves it, selected by pipeline and step; AverageValue divides the
step's total lag by its replicas, so lagPerReplica is exactly the per-worker target.
"""

from __future__ import annotations

from flowmill.spec import StepSpec, consumer_group
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext
from flowmill_operator.render.scaling import StepScale

# Scale up at once (lag is the signal to act on), scale down only after five quiet
# minutes and by half at most: a rebalance costs every member a pause, so flapping is
# worse than a few idle workers.
STEP_BEHAVIOR: Manifest = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 15},
            {"type": "Pods", "value": 4, "periodSeconds": 15},
        ],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Min",
        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
    },
}
API_BEHAVIOR: Manifest = {
    "scaleUp": {"stabilizationWindowSeconds": 0},
    "scaleDown": {"stabilizationWindowSeconds": 300},
}
KEDA_API_VERSION = "keda.sh/v1alpha1"


def step_autoscaler(ctx: RenderContext, step: StepSpec, scale: StepScale) -> Manifest | None:
    if scale.autoscaler == "hpa":
        return _step_hpa(ctx, step, scale)
    if scale.autoscaler == "keda":
        return _scaled_object(ctx, step, scale)
    return None


def _target(name: str) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def _step_hpa(ctx: RenderContext, step: StepSpec, scale: StepScale) -> Manifest:
    assert step.autoscaling is not None
    name = naming.step_deployment(ctx.name, step.name)
    metric = {
        "type": "External",
        "external": {
            "metric": {
                "name": ctx.settings.lag_metric,
                "selector": {"matchLabels": {"pipeline": ctx.name, "step": step.name}},
            },
            "target": {
                "type": "AverageValue",
                "averageValue": str(step.autoscaling.lag_per_replica),
            },
        },
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(name, "step", step.name),
        "spec": {
            "scaleTargetRef": _target(name),
            "minReplicas": scale.replicas,
            "maxReplicas": scale.max_replicas,
            "metrics": [metric],
            "behavior": STEP_BEHAVIOR,
        },
    }


def _scaled_object(ctx: RenderContext, step: StepSpec, scale: StepScale) -> Manifest:
    """KEDA reads the consumer group's lag from Kafka itself (no Prometheus needed) and
    can scale a step to zero."""
    assert step.autoscaling is not None
    name = naming.step_deployment(ctx.name, step.name)
    triggers = [
        {
            "type": "kafka",
            "metadata": {
                "bootstrapServers": ctx.bootstrap_servers(),
                "consumerGroup": consumer_group(ctx.name, step.name),
                "topic": topic,
                "lagThreshold": str(step.autoscaling.lag_per_replica),
                "offsetResetPolicy": "earliest",
                # Partitions cap the replicas already; idle consumers would only wait.
                "allowIdleConsumers": "false",
            },
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
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": STEP_BEHAVIOR}},
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
