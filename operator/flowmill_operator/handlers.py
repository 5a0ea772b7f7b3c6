"""Kopf handlers: each one small, each one ends in the same Reconciler.reconcile().

Handlers are registered on a registry built per operator instance (not Kopf's global
one), so tests can run several operators in one process, e.g. to restart one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from flowmill.spec import GROUP, PLURAL, VERSION
from flowmill_operator.credentials import Credentials, kopf_connection_info
from flowmill_operator.kube import KubeClient, KubeError
from flowmill_operator.reconcile import AfterApply, Outcome, Reconciler
from flowmill_operator.settings import OperatorSettings

log = logging.getLogger("flowmill.operator")


@dataclass
class Runtime:
    """What the handlers share; the Reconciler is made at startup, inside Kopf's loop,
    because its HTTP client belongs to that loop."""

    settings: OperatorSettings
    credentials: Credentials
    after_apply: AfterApply | None = None
    reconciler: Reconciler | None = field(default=None, init=False)

    def require(self) -> Reconciler:
        if self.reconciler is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.reconciler


def _post(body: Any, trigger: str, outcome: Outcome) -> None:
    if outcome.created:
        if trigger == "timer":
            # Only a hand-deleted child is created by a resync: that is drift, say so.
            reason, verb = "DriftCorrected", "recreated"
        else:
            reason, verb = "Applied", "created"
        kopf.event(body, type="Normal", reason=reason, message=f"{verb} {_list(outcome.created)}")
    if outcome.pruned:
        kopf.event(
            body,
            type="Normal",
            reason="Pruned",
            message=f"deleted {_list(outcome.pruned)} (no longer in the spec)",
        )
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    settings = runtime.settings
    retry = settings.retry_seconds

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf_connection_info(runtime.credentials)

    @kopf.on.startup(registry=registry)
    async def start(**_: Any) -> None:
        runtime.reconciler = Reconciler(
            KubeClient(runtime.credentials), settings, after_apply=runtime.after_apply
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        if runtime.reconciler is not None:
            await runtime.reconciler.kube.aclose()

    async def reconcile(body: Any, namespace: str, name: str, trigger: str) -> None:
        try:
            outcome = await runtime.require().reconcile(namespace, name)
        except KubeError as err:
            raise kopf.TemporaryError(f"reconcile failed: {err}", delay=retry) from err
        _post(body, trigger, outcome)
        if outcome.retry:
            raise kopf.TemporaryError(outcome.retry, delay=retry)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def created(body: Any, namespace: str, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "create")

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def updated(body: Any, namespace: str, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "update")

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def resumed(body: Any, namespace: str, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "resume")

    # The initial delay keeps the first resync off the create handler's heels.
    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        interval=settings.resync_seconds,
        initial_delay=settings.resync_seconds,
        backoff=retry,
    )
    async def resync(body: Any, namespace: str, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "timer")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def deleted(body: Any, namespace: str, name: str, spec: Any, **_: Any) -> None:
        """Topics in another namespace: the garbage collector only follows owner
        references within a namespace, so this finalizer deletes them."""
        kafka_namespace = (dict(spec).get("kafka") or {}).get("namespace")
        try:
            removed = await runtime.require().delete_topics_elsewhere(
                namespace, name, kafka_namespace
            )
        except KubeError as err:
            raise kopf.TemporaryError(f"deleting topics failed: {err}", delay=retry) from err
        if removed:
            log.info("Pipeline %s/%s: deleted KafkaTopics %s", namespace, name, removed)

    return registry


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # flowmill.dev names for what Kopf writes onto Pipelines, and annotations only: the
    # status schema is structural, so Kopf's status.kopf would be pruned by the apiserver.
    ks.persistence.finalizer = "flowmill.dev/finalizer"
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="flowmill.dev")
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="flowmill.dev", key="last-handled-configuration"
    )
    # Kopf would post an Event per handler log line ("Handler ... succeeded"); ours say
    # what changed, so only Kopf's warnings and errors become Events.
    ks.posting.level = logging.WARNING
    ks.posting.reporting_component = "flowmill-operator"
    # Watches reconnect within a minute even if a proxy silently drops them.
    ks.watching.server_timeout = 60
    ks.watching.client_timeout = 90
    ks.networking.request_timeout = 30
    return ks
