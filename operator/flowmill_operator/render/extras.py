"""Optional children: PodDisruptionBudgets (when asked) and a PodMonitor (when the
cluster runs the Prometheus Operator)."""

from __future__ import annotations

from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext


def wants_pdbs(ctx: RenderContext) -> bool:
    value = ctx.pipeline.metadata.annotations.get(naming.PDB_ANNOTATION)
    if value is None:
        return ctx.settings.pod_disruption_budgets
    return value.strip().lower() == "true"


def pod_disruption_budget(
    ctx: RenderContext, name: str, component: str, child: str | None = None
) -> Manifest:
    # maxUnavailable rather than minAvailable: it never blocks a drain of a Deployment
    # that runs a single replica, and an autoscaled one is fine losing one at a time.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": ctx.metadata(name, component, child),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": naming.selector_labels(ctx.name, component, child)},
        },
    }


def pod_monitor(ctx: RenderContext) -> Manifest:
    """One PodMonitor for every pod of the Pipeline: workers expose `metrics`, the API
    `http`; an endpoint whose port a pod lacks simply matches nothing there."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": ctx.metadata(ctx.name, "monitoring"),
        "spec": {
            "selector": {"matchLabels": {naming.PIPELINE_LABEL: ctx.name}},
            "podMetricsEndpoints": [
                {"port": "metrics", "path": "/metrics", "interval": "15s"},
                {"port": "http", "path": "/metrics", "interval": "15s"},
            ],
        },
    }
