"""Kopf handlers: each one small, each one ends in the same Reconciler.reconcile().

Handlers are registered on a registry built per operator instance (not Kopf's global
one), so tests can run several operators in one process, e.g. to restart one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
    because its HTTP client belongs to that loop. Its client is closed by whoever runs
    Kopf, after Kopf returns: timers may still fire during Kopf's cleanup activities."""

    settings: OperatorSettings
    credentials: Credentials
    after_apply: AfterApply | None = None
    reconciler: Reconciler | None = field(default=None, init=False)

    def require(self) -> Reconciler:
        if self.reconciler is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.reconciler


def _post(body: kopf.Body, trigger: str, outcome: Outcome) -> None:
    if outcome.created:
        if trigger == "timer":
            # Only a hand-deleted child is created by a resync: that is drift, say so.
            reason, verb = "DriftCorrected", "recreated"
        else:
            reason, verb = "Applied", "created"
        kopf.event(body, type="Normal", reason=reason, message=f"{verb} {_list(outcome.created)}")
    if trigger == "update" and outcome.valid and outcome.status is not None:
        generation = outcome.status.get("observedGeneration")
        kopf.event(
            body, type="Normal", reason="Updated", message=f"applied generation {generation}"
        )
    if outcome.pruned:
        kopf.event(
            body,
            type="Normal",
            reason="Pruned",
            message=f"deleted {_list(outcome.pruned)} (no longer in the spec)",
        )
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _plain(value: Any) -> Any:
    """Kopf's body as plain dicts and lists (it hands out read-only mapping views)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
        reconciler = Reconciler(
            KubeClient(runtime.credentials), settings, after_apply=runtime.after_apply
        )
        await reconciler.warm_up()
        runtime.reconciler = reconciler

    async def reconcile(body: kopf.Body, namespace: str | None, name: str, trigger: str) -> None:
        assert namespace is not None  # Pipelines are namespaced
        try:
            outcome = await runtime.require().reconcile(namespace, name)
        except KubeError as err:
            raise kopf.TemporaryError(f"reconcile failed: {err}", delay=retry) from err
        _post(body, trigger, outcome)
        if outcome.retry:
            raise kopf.TemporaryError(outcome.retry, delay=retry)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def created(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "create")

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def updated(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "update")

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def resumed(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
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
    async def resync(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        await reconcile(body, namespace, name, "timer")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, backoff=retry)
    async def deleted(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        """Topics in another namespace: the garbage collector only follows owner
        references within a namespace, so this finalizer deletes them; and the Kafka
        topics the operator created itself (admin mode), which no garbage collector sees."""
        assert namespace is not None
        reconciler = runtime.require()
        reconciler.forget(body["metadata"]["uid"])
        try:
            removed = await reconciler.delete_topics_elsewhere(_plain(body))
            deleted = await reconciler.delete_created_topics(_plain(body))
        except KubeError as err:
            raise kopf.TemporaryError(f"deleting topics failed: {err}", delay=retry) from err
        if removed:
            log.info("Pipeline %s/%s: deleted KafkaTopics %s", namespace, name, removed)
        if deleted:
            log.info("Pipeline %s/%s: deleted Kafka topics %s", namespace, name, deleted)

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
    # A Pipeline being deleted waits for its resync timer to stop; if a resync is in
    # flight, Kopf would otherwise look again only a minute later (holding the finalizer).
    ks.background.instant_exit_timeout = 10
    ks.background.cancellation_polling = 2
    return ks
