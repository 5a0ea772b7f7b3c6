"""The ConfigMap that workers and the API mount, and the hash that rolls their pods."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from flowmill.spec import API_VERSION, KIND, Pipeline
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext


def normalized_document(pipeline: Pipeline, namespace: str) -> dict[str, Any]:
    """The Pipeline as workers read it: every default filled in, nothing but the name and
    namespace in metadata (labels and kubectl's annotations would roll pods for nothing)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": pipeline.name, "namespace": namespace},
        "spec": pipeline.spec.to_manifest(),
    }


def spec_hash(pipeline: Pipeline, namespace: str) -> str:
    """Hash of what the processes compute, as a pod-template annotation.

    Scaling fields (replicas, autoscaling, paused) are left out: they change the Deployment or its
    autoscaler, and restarting every worker for them would only cause a rebalance.
    Defaults are left out too: an operator upgrade that adds a field whose default is the
    behaviour so far must not roll every Pipeline's pods, and a default written out hashes
    as if omitted (the pods would compute the same).
    """
    spec = pipeline.spec.model_dump(
        by_alias=True, exclude_none=True, exclude_defaults=True, mode="json"
    )
    document = {**normalized_document(pipeline, namespace), "spec": spec}
    for step in spec.get("steps", []):
        step.pop("replicas", None)
        step.pop("autoscaling", None)
    spec.get("api", {}).pop("replicas", None)
    spec.get("api", {}).pop("autoscaling", None)
    # Pausing scales to zero; resuming must bring back the same pods, not a rollout.
    spec.pop("paused", None)
    # A replay request scales one step and runs a Job; the step's pods stay the same.
    spec.pop("replay", None)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_map(ctx: RenderContext) -> Manifest:
    # Sorted keys: the apiserver stores a Pipeline's maps (aggregate, map, config) sorted,
    # so only sorted output is the same whether rendered from a file or from the cluster.
    text = yaml.safe_dump(
        normalized_document(ctx.pipeline, ctx.namespace), sort_keys=True, allow_unicode=True
    )
    meta = ctx.metadata(naming.config_map(ctx.name), "config")
    meta["annotations"] = {naming.SPEC_HASH_ANNOTATION: ctx.spec_hash}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"pipeline.yaml": text},
    }
