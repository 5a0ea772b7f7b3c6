"""One reconcile of one Pipeline: read it fresh, render, apply, prune, write status.

Every entry point (create, update, resume, the drift timer) runs this same function, so
there is one behaviour to test. A per-Pipeline lock serialises them, and the Pipeline is
re-read under the lock: a timer holding an old copy can never undo a newer spec.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from flowmill.manifest import PipelineInvalid, parse_pipeline
from flowmill.spec import API_VERSION, KIND, PLURAL, Pipeline
from flowmill_operator import naming
from flowmill_operator.kube import Kind, KubeClient, KubeError, gather_limited, kind_of
from flowmill_operator.render import Manifest, Rendered, RenderError, render
from flowmill_operator.render.autoscaling import KEDA_API_VERSION
from flowmill_operator.settings import OperatorSettings, RenderSettings
from flowmill_operator.status import Observation, invalid_status, pipeline_status

log = logging.getLogger("flowmill.operator")

PIPELINES = Kind(API_VERSION, KIND, PLURAL)
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
# Every kind a Pipeline may own in its namespace: what pruning looks through.
OWNED_KINDS = (
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("v1", "Service", "services"),
    HPA,
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Kind(KEDA_API_VERSION, "ScaledObject", "scaledobjects"),
    Kind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors"),
)
APPLY_CONCURRENCY = 8

Event = tuple[str, str, str]
"""(type, reason, message) of a Kubernetes Event to post on the Pipeline."""
AfterApply = Callable[[Manifest], Awaitable[None]]


@dataclass
class Outcome:
    """What a reconcile did; handlers turn it into Events and retries."""

    status: dict[str, Any] | None = None
    created: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    retry: str | None = None
    """Set when a failure may be transient: the handler asks Kopf to retry."""


def _label(manifest: Manifest) -> str:
    return f"{manifest['kind']} {manifest['metadata']['name']}"


def _identity(obj: Manifest) -> tuple[str, str, str, str]:
    """Group, kind, namespace, name: the version is left out so a Strimzi v1beta2 -> v1
    switch is the same topic, not a prune plus a create."""
    meta = obj["metadata"]
    return (kind_of(obj).group, obj["kind"], meta.get("namespace", ""), meta["name"])


def explain_apply_error(manifest: Manifest, err: KubeError) -> str:
    what = f"{_label(manifest)} ({manifest['apiVersion']})"
    # A kind the cluster does not serve answers a bare "404 page not found".
    if err.status == 404 and manifest["kind"] == "KafkaTopic":
        return f"{what} is not served: install Strimzi, or set the operator's Strimzi API version"
    if err.status == 404 and manifest["kind"] == "ScaledObject":
        return f"{what} is not served: install KEDA, or use autoscaling kind hpa"
    if err.status == 404:
        return f"{what} is not served by this cluster: {err}"
    if err.status == 403:
        return f"{what}: the operator is not allowed to apply it (RBAC): {err}"
    return f"{what} was refused: {err}"


def _transient(err: BaseException) -> bool:
    if isinstance(err, KubeError):
        return err.status in (409, 429) or err.status >= 500
    return True  # network errors, timeouts


class Reconciler:
    def __init__(
        self,
        kube: KubeClient,
        settings: OperatorSettings,
        *,
        after_apply: AfterApply | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.after_apply = after_apply
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    async def render_settings(self, pipeline: Pipeline) -> RenderSettings:
        mode = self.settings.pod_monitors
        wanted = mode == "always" or (
            mode == "auto" and await self.kube.serves("monitoring.coreos.com/v1", "podmonitors")
        )
        base = self.settings.render
        if wanted == base.pod_monitor:
            return base
        return RenderSettings(**{**base.__dict__, "pod_monitor": wanted})

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        async with self._lock(namespace, name):
            body = await self.kube.get(PIPELINES, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return Outcome()
            return await self._reconcile(body)

    async def _reconcile(self, body: Manifest) -> Outcome:
        meta = body["metadata"]
        namespace, generation = meta["namespace"], meta.get("generation", 1)
        previous = body.get("status") or {}
        outcome = Outcome()
        try:
            pipeline = parse_pipeline(_as_manifest(body), f"Pipeline {namespace}/{meta['name']}")
            settings = await self.render_settings(pipeline)
            rendered = render(pipeline, settings, namespace=namespace, uid=meta["uid"])
        except (PipelineInvalid, RenderError) as err:
            message = "; ".join(str(e) for e in err.errors)
            outcome.status = invalid_status(message, generation=generation, previous=previous)
            await self._write_status(namespace, meta["name"], outcome.status)
            self._transition_events(previous, outcome)
            return outcome

        seen = Observation()
        await self._apply(rendered, seen, outcome)
        prune_errors = await self._prune(pipeline, namespace, meta["uid"], rendered, outcome)
        await self._read_autoscalers(pipeline, namespace, rendered, seen)
        outcome.status = pipeline_status(
            pipeline,
            rendered,
            seen,
            namespace=namespace,
            generation=generation,
            previous=previous,
            prune_errors=prune_errors,
        )
        await self._write_status(namespace, meta["name"], outcome.status)
        self._transition_events(previous, outcome)
        return outcome

    async def _apply(self, rendered: Rendered, seen: Observation, outcome: Outcome) -> None:
        async def apply(manifest: Manifest) -> tuple[Manifest, bool]:
            live, created = await self.kube.apply(manifest)
            if self.after_apply is not None:
                await self.after_apply(manifest)
            return live, created

        results = await gather_limited(APPLY_CONCURRENCY, *(apply(m) for m in rendered.manifests))
        for manifest, result in zip(rendered.manifests, results, strict=True):
            meta = manifest["metadata"]
            key = (manifest["kind"], meta["namespace"], meta["name"])
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if _transient(result):
                    outcome.retry = f"applying {_label(manifest)}: {result}"
                seen.apply_errors[key] = (
                    explain_apply_error(manifest, result)
                    if isinstance(result, KubeError)
                    else f"{_label(manifest)}: {result}"
                )
                continue
            live, created = result
            seen.children[key] = live
            if created:
                outcome.created.append(_label(manifest))

    async def _prune(
        self, pipeline: Pipeline, namespace: str, uid: str, rendered: Rendered, outcome: Outcome
    ) -> list[str]:
        """Delete what this Pipeline made earlier but no longer renders (a removed step's
        Deployment and HPA, a topic taken out of the spec, an HPA replaced by KEDA)."""
        wanted = {_identity(m) for m in rendered.manifests}
        errors: list[str] = []
        candidates: list[tuple[Kind, Manifest]] = []
        selector = naming.child_selector(pipeline.name)
        for kind in OWNED_KINDS:
            try:
                for obj in await self.kube.list(kind, namespace, selector):
                    owners = obj["metadata"].get("ownerReferences") or []
                    # Only what this very Pipeline controls: KEDA's HPA carries our labels
                    # (copied from the ScaledObject) but is owned by the ScaledObject.
                    if any(o.get("uid") == uid and o.get("controller") for o in owners):
                        candidates.append((kind, {**obj, "kind": kind.kind}))
            except KubeError as err:
                if err.status != 404:  # 404: the CRD is not installed, so nothing to prune
                    errors.append(f"listing {kind.plural}: {err}")
        topics, topic_errors = await self._owned_topics(
            pipeline.name, namespace, pipeline.spec.kafka.namespace
        )
        candidates += topics
        errors += topic_errors
        for kind, obj in candidates:
            meta = obj["metadata"]
            identity = (kind.group, kind.kind, meta.get("namespace", ""), meta["name"])
            if identity in wanted or meta.get("deletionTimestamp"):
                continue
            try:
                await self.kube.delete(kind, meta.get("namespace"), meta["name"])
                outcome.pruned.append(f"{kind.kind} {meta['name']}")
            except KubeError as err:
                errors.append(f"deleting {kind.kind} {meta['name']}: {err}")
        return errors

    def topic_kind(self) -> Kind:
        return Kind(self.settings.render.strimzi_api_version, "KafkaTopic", "kafkatopics")

    async def _owned_topics(
        self, name: str, namespace: str, kafka_namespace: str | None
    ) -> tuple[list[tuple[Kind, Manifest]], list[str]]:
        """KafkaTopics labelled as this Pipeline's, wherever they are.

        Topics may live in the Kafka cluster's namespace, and that namespace may have
        changed since they were made, so look cluster-wide when RBAC allows and else in
        the two namespaces the spec can point at.
        """
        kind = self.topic_kind()
        selector = f"{naming.child_selector(name)},{naming.PIPELINE_NAMESPACE_LABEL}={namespace}"
        try:
            found = await self.kube.list(kind, None, selector)
        except KubeError as err:
            if err.status == 404:
                return [], []
            if err.status != 403:
                return [], [f"listing KafkaTopics: {err}"]
            found = []
            for ns in sorted({namespace, kafka_namespace or namespace}):
                try:
                    found += await self.kube.list(kind, ns, selector)
                except KubeError as err2:
                    if err2.status != 404:
                        return [], [f"listing KafkaTopics in {ns}: {err2}"]
        return [(kind, {**obj, "kind": kind.kind}) for obj in found], []

    async def _read_autoscalers(
        self, pipeline: Pipeline, namespace: str, rendered: Rendered, seen: Observation
    ) -> None:
        """The HPA of each autoscaled step, for its lag: ours came back from the apply,
        KEDA's has to be read."""
        for step in pipeline.spec.steps:
            scale = rendered.scales[step.name]
            name = naming.step_deployment(pipeline.name, step.name)
            if scale.autoscaler == "hpa":
                hpa = seen.children.get(("HorizontalPodAutoscaler", namespace, name))
            elif scale.autoscaler == "keda":
                try:
                    hpa = await self.kube.get(HPA, namespace, f"keda-hpa-{name}")
                except KubeError:
                    hpa = None
            else:
                continue
            if hpa is not None:
                seen.autoscalers[step.name] = hpa

    async def _write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            await self.kube.patch_status(PIPELINES, namespace, name, status)
        except KubeError as err:
            if err.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def _transition_events(self, previous: dict[str, Any], outcome: Outcome) -> None:
        """Events when the Pipeline becomes Ready, becomes Degraded or recovers, not on
        every resync: the timer runs every few seconds and an Event per run would bury
        the ones that matter."""
        assert outcome.status is not None
        before = {c.get("type"): c for c in previous.get("conditions", [])}
        now = {c["type"]: c for c in outcome.status["conditions"]}
        ready, degraded = now["Ready"], now["Degraded"]
        old_ready, old_degraded = before.get("Ready", {}), before.get("Degraded", {})
        if ready["status"] == "True" and old_ready.get("status") != "True":
            outcome.events.append(("Normal", "Ready", ready["message"]))
        if degraded["status"] == "True" and (
            old_degraded.get("status"),
            old_degraded.get("message"),
        ) != ("True", degraded["message"]):
            outcome.events.append(("Warning", degraded["reason"], degraded["message"][:1000]))
        if degraded["status"] == "False" and old_degraded.get("status") == "True":
            outcome.events.append(("Normal", "Recovered", "nothing needs attention any more"))

    async def delete_topics_elsewhere(
        self, namespace: str, name: str, kafka_namespace: str | None
    ) -> list[str]:
        """On Pipeline deletion: KafkaTopics outside its namespace, which owner references
        cannot reach. Those in its namespace go with the garbage collector."""
        found, errors = await self._owned_topics(name, namespace, kafka_namespace)
        if errors:
            raise KubeError(500, errors[0])
        deleted = []
        for kind, obj in found:
            ns = obj["metadata"]["namespace"]
            if ns != namespace:
                await self.kube.delete(kind, ns, obj["metadata"]["name"])
                deleted.append(f"{ns}/{obj['metadata']['name']}")
        return deleted


def _as_manifest(body: Manifest) -> Manifest:
    """The parts of the live object a manifest has (status, managedFields and the
    rest of the server's metadata would be unknown fields to the spec model)."""
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body.get("kind", KIND),
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        },
        "spec": body.get("spec") or {},
    }
