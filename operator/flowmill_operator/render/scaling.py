"""How many workers a step may run, decided once for the Deployment, its autoscaler and
the status: never more than the input topic has partitions, because a consumer group
gives each partition to one member and the rest would sit idle."""

from __future__ import annotations

from dataclasses import dataclass

from flowmill.spec import StepSpec
from flowmill_operator import naming
from flowmill_operator.render.context import RenderContext


@dataclass(frozen=True)
class StepScale:
    name: str
    partitions: int
    autoscaler: str | None
    """hpa, keda, or None for a fixed replica count."""
    replicas: int
    """Fixed count (autoscaler None), else the autoscaler's floor."""
    max_replicas: int
    message: str = ""


def pipeline_autoscaler(ctx: RenderContext) -> str | None:
    """The Pipeline-wide choice, from its annotation (the spec has a per-step field)."""
    value = ctx.pipeline.metadata.annotations.get(naming.AUTOSCALER_ANNOTATION, "").strip()
    return value if value in ("hpa", "keda") else None


PAUSED_MESSAGE = "paused (spec.paused): scaled to zero"
REPLAYING_MESSAGE = "replaying (spec.replay): scaled to zero while its reset Job runs"


def step_scale(ctx: RenderContext, step: StepSpec) -> StepScale:
    partitions = ctx.pipeline.spec.topic(step.from_).partitions
    if ctx.pipeline.spec.paused:
        # No autoscaler either: an HPA's floor would scale the Deployment back up.
        return StepScale(step.name, partitions, None, 0, 0, PAUSED_MESSAGE)
    if ctx.replaying == step.name:
        # As paused: nothing of the step may run while its positions are reset.
        return StepScale(step.name, partitions, None, 0, 0, REPLAYING_MESSAGE)
    auto = step.autoscaling
    if auto is None:
        replicas = min(step.replicas, partitions)
        message = (
            f"replicas {step.replicas} capped at the {partitions} partitions of topic {step.from_}"
            if replicas < step.replicas
            else ""
        )
        return StepScale(step.name, partitions, None, replicas, replicas, message)
    kind = auto.kind or pipeline_autoscaler(ctx) or ctx.settings.autoscaler
    notes = []
    maximum = min(auto.max_replicas, partitions)
    if maximum < auto.max_replicas:
        notes.append(
            f"maxReplicas {auto.max_replicas} capped at the {partitions} partitions of "
            f"topic {step.from_}"
        )
    minimum = auto.min_replicas
    if kind == "hpa" and minimum == 0 and not ctx.settings.hpa_scale_to_zero:
        # Scale-to-zero is an alpha feature gate of the HPA (the apiserver rejects
        # minReplicas 0 without it); KEDA does it natively.
        minimum = 1
        notes.append(
            "minReplicas 0 needs KEDA or the HPAScaleToZero feature gate; the HPA keeps at least 1"
        )
    if kind == "keda" and auto.target_catch_up_seconds is not None:
        notes.append("targetCatchUpSeconds needs the HPA; KEDA scales on lagPerReplica only")
    minimum = min(minimum, maximum)
    return StepScale(step.name, partitions, kind, minimum, maximum, "; ".join(notes))
