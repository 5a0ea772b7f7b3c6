"""Run the operator: in the foreground (`flowmill operator`) or in a thread of another
program (tests, embedding), with the same settings either way."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import kopf

from flowmill_operator.credentials import Credentials, load_credentials
from flowmill_operator.handlers import Runtime, build_registry, kopf_settings
from flowmill_operator.kube import KubeClient, KubeError
from flowmill_operator.reconcile import AfterApply
from flowmill_operator.settings import OperatorSettings


def operator_kwargs(settings: OperatorSettings) -> dict[str, Any]:
    """kopf.operator() arguments for where to watch and how to peer."""
    kwargs: dict[str, Any] = {"liveness_endpoint": settings.liveness_endpoint}
    if settings.clusterwide:
        kwargs["clusterwide"] = True
    else:
        kwargs["namespaces"] = list(settings.namespaces)
    if settings.peering:
        # Kopf pauses every operator that sees a peer of the same priority, so replicas of
        # one Deployment must differ: a random priority elects one without configuration.
        kwargs["peering_name"] = settings.peering
        kwargs["priority"] = (
            settings.priority if settings.priority is not None else random.randint(1, 1_000_000)
        )
        kwargs["standalone"] = False
    else:
        kwargs["standalone"] = True
    return kwargs


PEERING_API_VERSION = "kopf.dev/v1"


class SetupError(RuntimeError):
    """The operator cannot start as configured; the message says what to change."""


async def ensure_peering(settings: OperatorSettings, credentials: Credentials) -> None:
    """Create the peering object(s) Kopf needs but never creates itself: one
    ClusterKopfPeering for a cluster-wide operator, else a KopfPeering per watched
    namespace (so peering needs exact namespace names, not globs)."""
    if not settings.peering:
        return
    if settings.clusterwide:
        objects = [{"apiVersion": PEERING_API_VERSION, "kind": "ClusterKopfPeering",
                    "metadata": {"name": settings.peering}}]  # fmt: skip
    else:
        globs = [ns for ns in settings.namespaces if any(c in ns for c in "*?[")]
        if globs:
            raise SetupError(
                f"peering needs exact namespace names, not globs ({', '.join(globs)}): "
                "Kopf peers per namespace, and new namespaces would have no peering object"
            )
        objects = [
            {
                "apiVersion": PEERING_API_VERSION,
                "kind": "KopfPeering",
                "metadata": {"name": settings.peering, "namespace": ns},
            }
            for ns in settings.namespaces
        ]
    kube = KubeClient(credentials)
    try:
        for obj in objects:
            try:
                await kube.apply(obj)
            except KubeError as err:
                if err.status == 404:
                    raise SetupError(
                        "peering needs the KopfPeering CRDs (kopf.dev/v1), which the Helm "
                        "chart installs; or run with --standalone"
                    ) from err
                raise
    finally:
        await kube.aclose()


async def run(
    settings: OperatorSettings,
    *,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    after_apply: AfterApply | None = None,
) -> None:
    runtime = Runtime(settings, load_credentials(settings.kubeconfig), after_apply)
    await ensure_peering(settings, runtime.credentials)
    ks = kopf_settings(settings)
    try:
        await kopf.operator(
            registry=build_registry(runtime),
            settings=ks,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **operator_kwargs(settings),
        )
    finally:
        if runtime.reconciler is not None:
            await runtime.reconciler.kube.aclose()
            await runtime.reconciler.tables.close()


class OperatorThread:
    """The operator in a background thread with its own event loop.

    start() returns once Kopf is ready; stop() asks it to finish and joins the thread.
    Handlers in flight are cancelled, as a killed pod's would be.
    """

    def __init__(self, settings: OperatorSettings, *, after_apply: AfterApply | None = None):
        self.settings = settings
        self.after_apply = after_apply
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="flowmill-operator", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(
                run(
                    self.settings,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    after_apply=self.after_apply,
                )
            )
        except BaseException as err:
            self.error = err
            self._ready.set()

    def start(self, timeout: float = 30.0) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the operator was not ready within {timeout:.0f}s")
        if self.error is not None:
            raise RuntimeError("the operator failed to start") from self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the operator did not stop within {timeout:.0f}s")

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
