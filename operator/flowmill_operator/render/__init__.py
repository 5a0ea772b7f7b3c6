"""Pipeline -> child manifests, as a pure function: no cluster, no clock, no randomness.

The operator applies exactly this list and `flowmill render` prints exactly this list;
the only difference is that the operator knows the Pipeline's uid and so adds owner
references.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from flowmill.spec import Pipeline
from flowmill.spec.pipeline import TopicManagement
from flowmill_operator import naming
from flowmill_operator.render.autoscaling import api_hpa, step_autoscaler
from flowmill_operator.render.config import config_map, spec_hash
from flowmill_operator.render.context import Manifest, RenderContext, RenderError, preflight
from flowmill_operator.render.extras import pod_disruption_budget, pod_monitor, wants_pdbs
from flowmill_operator.render.replay import check_replay, replay_job
from flowmill_operator.render.scaling import StepScale, step_scale
from flowmill_operator.render.topics import kafka_topics
from flowmill_operator.render.workloads import (
    api_deployment,
    api_service,
    source_deployment,
    step_deployment,
)
from flowmill_operator.settings import RenderSettings

__all__ = ["Manifest", "RenderError", "Rendered", "StepScale", "render", "to_yaml"]


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]
    """In apply order: config, topics, workloads (a replay's reset Job after the step
    Deployments), Service, autoscalers, extras."""
    scales: dict[str, StepScale]
    """Per step: replicas and the (capped) autoscaling ceiling, for status."""
    spec_hash: str
    topic_management: TopicManagement
    """strimzi, admin or unmanaged: who creates the topics (render/context.py decides)."""

    @property
    def fingerprint(self) -> str:
        """Changes whenever any rendered child would."""
        canonical = json.dumps(self.manifests, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def render(
    pipeline: Pipeline,
    settings: RenderSettings,
    *,
    namespace: str | None = None,
    uid: str | None = None,
    replayed: str | None = None,
) -> Rendered:
    """Every child of `pipeline`. Raises RenderError (naming fields) when the Pipeline
    cannot run in a cluster; then nothing is rendered at all. `replayed`: the id of the
    replay request the operator has finished (status.replay), so spec.replay with that
    id renders as if it were not there."""
    preflight(pipeline, settings)
    namespace = namespace or pipeline.metadata.namespace or "default"
    spec = pipeline.spec
    replay = spec.replay
    replaying = replay.step if replay is not None and replay.id != replayed else None
    ctx = RenderContext(
        pipeline, namespace, settings, uid, spec_hash(pipeline, namespace), replaying
    )
    check_replay(ctx)
    scales = {step.name: step_scale(ctx, step) for step in spec.steps}

    out: list[Manifest] = [config_map(ctx), *kafka_topics(ctx)]
    out += [source_deployment(ctx, source) for source in spec.sources]
    steps = [step_deployment(ctx, step, scales[step.name]) for step in spec.steps]
    out += steps
    if replaying is not None:
        index = [s.name for s in spec.steps].index(replaying)
        # After the Deployments: applied with the step's scale-down, and its pod waits
        # for the step's last worker to leave (render/replay.py).
        out.append(replay_job(ctx, spec.steps[index], steps[index]))
    if spec.api.enabled:
        out += [api_deployment(ctx), api_service(ctx)]
    for step in spec.steps:
        out += step_autoscaler(ctx, step, scales[step.name])
    if spec.api.enabled and (hpa := api_hpa(ctx)) is not None:
        out.append(hpa)
    if wants_pdbs(ctx):
        out += [
            pod_disruption_budget(
                ctx, naming.step_deployment(ctx.name, step.name), "step", step.name
            )
            for step in spec.steps
        ]
        if spec.api.enabled:
            out.append(pod_disruption_budget(ctx, naming.api_deployment(ctx.name), "api"))
    if settings.pod_monitor:
        out.append(pod_monitor(ctx))
    # Renderers share constant dicts (security contexts, behaviors); a deep copy keeps a
    # caller that edits one manifest from editing every later render.
    return Rendered(copy.deepcopy(out), scales, ctx.spec_hash, ctx.kafka.topic_management)


class _NoAliases(yaml.SafeDumper):
    # Equal sub-documents must print in full, as `kubectl get -o yaml` shows them, never
    # as YAML anchors and aliases.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # The ConfigMap's pipeline.yaml reads as YAML in a literal block, not an escaped line.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_NoAliases.add_representer(str, _str)


def to_yaml(manifests: list[Manifest]) -> str:
    """Multi-document YAML, keys in the order they were rendered (kind first)."""
    return yaml.dump_all(
        manifests, Dumper=_NoAliases, sort_keys=False, explicit_start=True, allow_unicode=True
    )
