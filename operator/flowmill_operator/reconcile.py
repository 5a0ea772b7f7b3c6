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
from flowmill.spec import API_VERSION, KIND, PLURAL, Pipeline, all_topics
from flowmill.spec.graph import dead_letter_topics
from flowmill_operator import naming
from flowmill_operator.kube import Kind, KubeClient, KubeError, gather_limited, kind_of
from flowmill_operator.render import Manifest, Rendered, RenderError, render
from flowmill_operator.render.autoscaling import KEDA_API_VERSION
from flowmill_operator.render.context import kafka_target
from flowmill_operator.settings import OperatorSettings, RenderSettings
from flowmill_operator.status import (
    Observation,
    dead_letter_events,
    invalid_status,
    pipeline_status,
    replayed_id,
    restart_events,
)
from flowmill_operator.table_state import TableStateReader
from flowmill_operator.topic_admin import (
    DeadLetterCount,
    KafkaAdminError,
    TopicAdmin,
    TopicSync,
)

log = logging.getLogger("flowmill.operator")

PIPELINES = Kind(API_VERSION, KIND, PLURAL)
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PODS = Kind("v1", "Pod", "pods")
"""Read only, for their restarts (status.restarts, WorkerRestarted Events)."""
# Every kind a Pipeline may own in its namespace: what pruning looks through.
OWNED_KINDS = (
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("v1", "Service", "services"),
    HPA,
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Kind(KEDA_API_VERSION, "ScaledObject", "scaledobjects"),
    Kind(KEDA_API_VERSION, "TriggerAuthentication", "triggerauthentications"),
    Kind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors"),
    Kind("batch/v1", "Job", "jobs"),  # a replay's reset (render/replay.py)
)
APPLY_CONCURRENCY = 8
RECONCILE_CONCURRENCY = 16
"""Pipelines reconciled at once. Bounded so that after a burst (an operator restart, 200
Pipelines applied together) each finishes quickly in turn instead of all slowly."""

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
    valid: bool = True
    """False when the spec was invalid and nothing was applied."""


Identity = tuple[str, str, str, str]


@dataclass(frozen=True)
class _Applied:
    """What this operator last applied for a Pipeline: the rendered set's fingerprint
    and, per child, the version it had right after (see _marker)."""

    fingerprint: str
    markers: dict[tuple[str, str, str], str]


def _marker(obj: Manifest) -> str:
    """Changes when someone changes the object's spec: its generation where it has one
    (status updates by controllers leave that alone), else its resourceVersion."""
    meta = obj["metadata"]
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"rv{meta.get('resourceVersion')}"


def _key(manifest: Manifest) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return (manifest["kind"], meta.get("namespace", ""), meta["name"])


def _label(manifest: Manifest) -> str:
    return f"{manifest['kind']} {manifest['metadata']['name']}"


def _identity(obj: Manifest) -> Identity:
    """Group, kind, namespace, name: the version is left out so a Strimzi v1beta2 -> v1
    switch is the same topic, not a prune plus a create."""
    meta = obj["metadata"]
    return (kind_of(obj).group, obj["kind"], meta.get("namespace", ""), meta["name"])


def explain_apply_error(manifest: Manifest, err: KubeError) -> str:
    what = f"{_label(manifest)} ({manifest['apiVersion']})"
    # A kind the cluster does not serve answers a bare "404 page not found".
    if err.status == 404 and manifest["kind"] == "KafkaTopic":
        return f"{what} is not served: install Strimzi, or set the operator's Strimzi API version"
    if err.status == 404 and manifest["kind"] in ("ScaledObject", "TriggerAuthentication"):
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
        self._running = asyncio.Semaphore(RECONCILE_CONCURRENCY)
        self._applied: dict[str, _Applied] = {}
        self.tables = TableStateReader()
        """Reads the serving tables' state from each Pipeline's Redis, for status."""

    async def warm_up(self) -> None:
        """Pay one-time costs at startup rather than on the first Pipeline: the spec
        models import jsonschema and the CEL compiler on first use, and every pooled
        connection to the apiserver needs a TLS handshake."""
        parse_pipeline(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": "warm-up"},
                "spec": {
                    "topics": [{"name": "t"}],
                    "steps": [
                        {"name": "s", "from": "t", "validate": {"schema": {}}, "filter": "true"}
                    ],
                },
            }
        )
        await gather_limited(
            APPLY_CONCURRENCY,
            range(APPLY_CONCURRENCY),
            lambda _: self.kube.serves("v1", "configmaps", ttl=0),
        )

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
        return base.model_copy(update={"pod_monitor": wanted})

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        # The Pipeline's own lock first: a queued resync must not hold a global slot.
        async with self._lock(namespace, name), self._running:
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
            rendered = render(
                pipeline,
                settings,
                namespace=namespace,
                uid=meta["uid"],
                replayed=replayed_id(previous),
            )
        except (PipelineInvalid, RenderError) as err:
            message = "; ".join(str(e) for e in err.errors)
            outcome.valid = False
            outcome.status = invalid_status(message, generation=generation, previous=previous)
            await self._write_status(namespace, meta["name"], outcome.status, previous)
            self._transition_events(previous, outcome)
            return outcome

        uid = meta["uid"]
        seen = Observation()
        if rendered.topic_management == "admin":
            # Topics first, as Strimzi's would be: workers then start on complete topics.
            await self._sync_admin_topics(pipeline, namespace, previous, seen, outcome)
        owned, list_errors = await self._list_owned(pipeline, namespace, uid, seen)
        await self._apply(self._needing_apply(uid, rendered, owned), seen, outcome)
        for manifest in rendered.manifests:  # what was not applied is as listed
            key = _key(manifest)
            if key not in seen.children and _identity(manifest) in owned:
                seen.children[key] = owned[_identity(manifest)][1]
        self._remember(uid, rendered, seen)
        still_wanted = {t.name for t in all_topics(pipeline)}
        prune_errors = list_errors + await self._prune(owned, rendered, outcome, still_wanted)
        self._find_autoscalers(pipeline, namespace, rendered, seen)
        seen.tables = await self.tables.read(pipeline, settings)
        seen.pods = await self._list_pods(pipeline, namespace)
        outcome.status = pipeline_status(
            pipeline,
            rendered,
            seen,
            namespace=namespace,
            generation=generation,
            previous=previous,
            prune_errors=prune_errors,
        )
        await self._write_status(namespace, meta["name"], outcome.status, previous)
        self._transition_events(previous, outcome)
        outcome.events += restart_events(previous, outcome.status, seen)
        outcome.events += dead_letter_events(previous, outcome.status, seen)
        replay = outcome.status.get("replay")
        if (
            replay is not None
            and replay["phase"] == "Succeeded"
            and replayed_id(previous) != replay["id"]
        ):
            # The reset is done: scale the step back now, not at the next resync (the
            # status just written says so, which is what the next render goes by).
            outcome.events.append(
                ("Normal", "Replayed", f"step {replay['step']} reset for replay {replay['id']}")
            )
            again = await self._reconcile({**body, "status": outcome.status})
            again.created = outcome.created + again.created
            again.events = outcome.events + again.events
            again.pruned = outcome.pruned + again.pruned
            return again
        return outcome

    async def _list_pods(self, pipeline: Pipeline, namespace: str) -> list[Manifest] | None:
        """The Pipeline's pods, or None when they cannot be listed (an operator installed
        before it was allowed to read pods): its restarts are then unknown, nothing else."""
        try:
            return await self.kube.list(PODS, namespace, naming.child_selector(pipeline.name))
        except KubeError as err:
            if _transient(err):
                raise
            log.warning("Pipeline %s/%s: cannot list pods: %s", namespace, pipeline.name, err)
            return None

    async def _sync_admin_topics(
        self,
        pipeline: Pipeline,
        namespace: str,
        previous: dict[str, Any],
        seen: Observation,
        outcome: Outcome,
    ) -> None:
        """Create and update the topics through the Kafka admin API (in a thread: the
        client blocks), and delete those this operator created that left the spec."""
        servers = kafka_target(pipeline, namespace, self.settings.render).bootstrap_servers
        assert servers is not None  # checked by preflight()
        ours = created_topics(previous)
        wanted = all_topics(pipeline)
        gone = sorted(ours - {t.name for t in wanted})

        dead_topics = {t: pipeline.spec.topic(t).partitions for t in dead_letter_topics(pipeline)}

        def sync() -> tuple[TopicSync, list[str], dict[str, DeadLetterCount] | None]:
            with TopicAdmin(servers) as admin:
                synced, deleted = admin.sync(wanted, ours), admin.delete(gone)
                try:
                    dead = admin.dead_letters(dead_topics)
                except KafkaAdminError as err:  # the topics are synced; only the count is lost
                    log.warning("Pipeline %s: counting dead letters: %s", pipeline.name, err)
                    dead = None
                return synced, deleted, dead

        try:
            synced, deleted, seen.dead_letters = await asyncio.to_thread(sync)
        except KafkaAdminError as err:
            seen.topic_error = str(err)
            outcome.retry = f"syncing topics: {err}"
            return
        seen.topic_sync = synced
        outcome.created += [f"Kafka topic {name}" for name in synced.created]
        outcome.pruned += [f"Kafka topic {name}" for name in deleted]
        if synced.changes:
            outcome.events.append(("Normal", "TopicsUpdated", "; ".join(synced.changes)[:1000]))

    def _needing_apply(
        self, uid: str, rendered: Rendered, owned: dict[Identity, tuple[Kind, Manifest]]
    ) -> list[Manifest]:
        """Everything when the rendered set changed since this operator last applied it
        (or it never did); else only children that are missing or were changed by
        someone else. A steady resync then costs a few LISTs and no writes."""
        last = self._applied.get(uid)
        if last is None or last.fingerprint != rendered.fingerprint:
            return list(rendered.manifests)
        stale = []
        for manifest in rendered.manifests:
            found = owned.get(_identity(manifest))
            if found is None or last.markers.get(_key(manifest)) != _marker(found[1]):
                stale.append(manifest)
        return stale

    def _remember(self, uid: str, rendered: Rendered, seen: Observation) -> None:
        if seen.apply_errors or len(seen.children) < len(rendered.manifests):
            self._applied.pop(uid, None)  # apply everything again next time
            return
        markers = {key: _marker(obj) for key, obj in seen.children.items()}
        self._applied[uid] = _Applied(rendered.fingerprint, markers)

    def forget(self, uid: str) -> None:
        self._applied.pop(uid, None)

    async def _apply(self, manifests: list[Manifest], seen: Observation, outcome: Outcome) -> None:
        async def apply(manifest: Manifest) -> tuple[Manifest, bool]:
            live, created = await self.kube.apply(manifest)
            if self.after_apply is not None:
                await self.after_apply(manifest)
            return live, created

        results = await gather_limited(APPLY_CONCURRENCY, manifests, apply)
        for manifest, result in zip(manifests, results, strict=True):
            key = _key(manifest)
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

    async def _list_owned(
        self, pipeline: Pipeline, namespace: str, uid: str, seen: Observation
    ) -> tuple[dict[Identity, tuple[Kind, Manifest]], list[str]]:
        """Every child this Pipeline owns now: in its namespace what it controls, and
        the KafkaTopics labelled with it wherever they are. KEDA's HPAs carry our labels
        (copied from the ScaledObject) but belong to the ScaledObject: they are never
        pruned, only read for the lag they report (into `seen.keda_hpas`)."""
        selector = naming.child_selector(pipeline.name)

        async def list_kind(kind: Kind) -> list[Manifest]:
            return await self.kube.list(kind, namespace, selector)

        results = await gather_limited(APPLY_CONCURRENCY, OWNED_KINDS, list_kind)
        owned: dict[Identity, tuple[Kind, Manifest]] = {}
        errors: list[str] = []
        for kind, result in zip(OWNED_KINDS, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, KubeError) or _transient(result):
                    raise result  # without the full picture neither drift nor pruning is safe
                if result.status != 404:  # 404: the CRD is not installed, so nothing is there
                    errors.append(f"listing {kind.plural}: {result}")
                continue
            for item in result:
                obj = {**item, "apiVersion": kind.api_version, "kind": kind.kind}
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid and o.get("controller") for o in owners):
                    owned[_identity(obj)] = (kind, obj)
                elif kind is HPA and obj["metadata"]["name"].startswith("keda-hpa-"):
                    seen.keda_hpas[obj["metadata"]["name"]] = obj
        topics, topic_errors = await self._owned_topics(
            pipeline.name,
            namespace,
            kafka_target(pipeline, namespace, self.settings.render).namespace,
        )
        for kind, obj in topics:
            owned[_identity(obj)] = (kind, obj)
        return owned, errors + topic_errors

    async def _prune(
        self,
        owned: dict[Identity, tuple[Kind, Manifest]],
        rendered: Rendered,
        outcome: Outcome,
        topics_in_spec: set[str],
    ) -> list[str]:
        """Delete what this Pipeline made earlier but no longer renders (a removed step's
        Deployment and HPA, a topic taken out of the spec, an HPA replaced by KEDA).

        A KafkaTopic whose topic is still in the spec (the Pipeline left Strimzi topic
        management) is first marked strimzi.io/managed=false: Strimzi then deletes the
        resource but keeps the topic and its data in Kafka."""
        wanted = {_identity(m) for m in rendered.manifests}
        errors: list[str] = []
        for identity, (kind, obj) in owned.items():
            meta = obj["metadata"]
            if identity in wanted or meta.get("deletionTimestamp"):
                continue
            try:
                if obj["kind"] == "KafkaTopic" and _topic_name(obj) in topics_in_spec:
                    await self.kube.apply(_released(obj))
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
            if _transient(err):
                raise
            if err.status != 403:
                return [], [f"listing KafkaTopics: {err}"]
            found = []
            for ns in sorted({namespace, kafka_namespace or namespace}):
                try:
                    found += await self.kube.list(kind, ns, selector)
                except KubeError as err2:
                    if err2.status != 404:
                        return [], [f"listing KafkaTopics in {ns}: {err2}"]
        return [
            (kind, {**obj, "apiVersion": kind.api_version, "kind": kind.kind}) for obj in found
        ], []

    def _find_autoscalers(
        self,
        pipeline: Pipeline,
        namespace: str,
        rendered: Rendered,
        seen: Observation,
    ) -> None:
        """The HPA of each autoscaled step, for its lag: ours, or the one KEDA made."""
        for step in pipeline.spec.steps:
            scale = rendered.scales[step.name]
            name = naming.step_deployment(pipeline.name, step.name)
            hpa = None
            if scale.autoscaler == "hpa":
                hpa = seen.children.get(("HorizontalPodAutoscaler", namespace, name))
            elif scale.autoscaler == "keda":
                hpa = seen.keda_hpas.get(f"keda-hpa-{name}")
            if hpa is not None:
                seen.autoscalers[step.name] = hpa

    async def _write_status(
        self, namespace: str, name: str, status: dict[str, Any], previous: dict[str, Any]
    ) -> None:
        if {k: v for k, v in status.items() if v is not None} == previous:
            return  # the usual resync: nothing changed, so write nothing
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

    async def delete_created_topics(self, body: Manifest) -> list[str]:
        """On Pipeline deletion: the Kafka topics this operator created through the admin
        API (status.topics says which); a topic that existed before is never deleted."""
        names = created_topics(body.get("status") or {})
        if not names:
            return []
        try:
            pipeline = parse_pipeline(_as_manifest(body))
        except PipelineInvalid as err:
            # Invalid now, valid when the topics were made: no way to know where Kafka is.
            log.warning(
                "Pipeline %s: cannot delete its topics %s: %s",
                body["metadata"]["name"],
                sorted(names),
                err,
            )
            return []
        target = kafka_target(pipeline, body["metadata"]["namespace"], self.settings.render)
        servers = target.bootstrap_servers
        if servers is None:
            return []

        def delete() -> list[str]:
            with TopicAdmin(servers) as admin:
                return admin.delete(sorted(names))

        try:
            return await asyncio.to_thread(delete)
        except KafkaAdminError as err:
            raise KubeError(503, f"deleting Kafka topics {sorted(names)}: {err}") from err

    async def delete_topics_elsewhere(self, body: Manifest) -> list[str]:
        """On Pipeline deletion: KafkaTopics outside its namespace, which owner references
        cannot reach. Those in its namespace go with the garbage collector."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            pipeline = parse_pipeline(_as_manifest(body))
            kafka_namespace = kafka_target(pipeline, namespace, self.settings.render).namespace
        except PipelineInvalid:  # never valid: then it never made topics anywhere else
            kafka_namespace = namespace
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


STRIMZI_MANAGED_ANNOTATION = "strimzi.io/managed"


def _topic_name(topic: Manifest) -> str:
    return str((topic.get("spec") or {}).get("topicName") or topic["metadata"]["name"])


def _released(topic: Manifest) -> Manifest:
    """The KafkaTopic as applied, plus the annotation that makes Strimzi let go of the
    Kafka topic (deleting the resource then leaves the topic alone)."""
    meta = topic["metadata"]
    return {
        "apiVersion": topic["apiVersion"],
        "kind": topic["kind"],
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": meta.get("labels") or {},
            "annotations": {STRIMZI_MANAGED_ANNOTATION: "false"},
        },
        "spec": topic.get("spec") or {},
    }


def created_topics(status: dict[str, Any]) -> set[str]:
    """Topics the operator created through the admin API, by the Pipeline's status."""
    return {t["name"] for t in status.get("topics") or [] if t.get("created")}


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
