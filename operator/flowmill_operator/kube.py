"""A small async Kubernetes client for what reconciling needs: server-side apply, list by
label, delete, status patches and discovery.

Kopf watches with its own client; this one writes. It is async (httpx) so applying a
Pipeline's children never blocks Kopf's event loop, and it speaks server-side apply
directly: the apiserver merges our fields with everyone else's (the HPA's `replicas`,
kubectl's edits) and `force` takes back the fields we own after a hand edit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from flowmill_operator.credentials import Credentials
from flowmill_operator.naming import MANAGER

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


def kind_of(manifest: dict[str, Any]) -> Kind:
    """The Kind of a manifest; every kind flowmill renders has a regular plural."""
    return Kind(manifest["apiVersion"], manifest["kind"], manifest["kind"].lower() + "s")


class KubeError(Exception):
    """The apiserver refused a request; `status` is the HTTP code."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")


class KubeClient:
    def __init__(
        self, credentials: Credentials, *, timeout: float = 30.0, max_connections: int = 32
    ) -> None:
        self.credentials = credentials
        # Requests queue here rather than in the connection pool: hundreds of Pipelines
        # reconciling at once must wait their turn, not time out waiting for a socket.
        self._slots = asyncio.Semaphore(max_connections)
        self._http = httpx.AsyncClient(
            base_url=credentials.server,
            verify=credentials.ssl_context(),
            timeout=httpx.Timeout(timeout, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._served: dict[str, tuple[float, set[str]]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if (authorization := self.credentials.authorization()) is not None:
            headers["Authorization"] = authorization
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body).encode()
        async with self._slots:
            response = await self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        if response.status_code >= 400:
            try:
                status = response.json()
                message, reason = status.get("message", response.text), status.get("reason", "")
            except ValueError:
                message, reason = response.text, ""
            raise KubeError(response.status_code, message.strip(), reason)
        return response

    async def apply(self, manifest: dict[str, Any], *, dry_run: bool = False) -> tuple[dict, bool]:
        """Server-side apply; returns the object and whether it was created."""
        meta = manifest["metadata"]
        params = {"fieldManager": MANAGER, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        response = await self._request(
            "PATCH",
            kind_of(manifest).path(meta.get("namespace"), meta["name"]),
            params=params,
            body=manifest,
            # JSON is YAML, so the apply content type takes the JSON body as it is.
            content_type="application/apply-patch+yaml",
        )
        return response.json(), response.status_code == 201

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            response = await self._request("GET", kind.path(namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return dict(response.json())

    async def list(
        self, kind: Kind, namespace: str | None, label_selector: str
    ) -> list[dict[str, Any]]:
        """Objects matching the selector; namespace None lists across the cluster."""
        response = await self._request(
            "GET", kind.path(namespace), params={"labelSelector": label_selector}
        )
        return list(response.json().get("items", []))

    async def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete in the background (dependents go via the garbage collector); False if
        it was already gone."""
        try:
            await self._request(
                "DELETE",
                kind.path(namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self, kind: Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        response = await self._request(
            "PATCH",
            kind.path(namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        return dict(response.json())

    async def serves(self, api_version: str, plural: str, *, ttl: float = 60.0) -> bool:
        """Whether the cluster serves a resource (CRDs come and go), cached for `ttl`."""
        now = time.monotonic()
        cached = self._served.get(api_version)
        if cached is None or now - cached[0] > ttl:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                response = await self._request("GET", path)
                names = {r["name"] for r in response.json().get("resources", [])}
            except KubeError as err:
                if err.status != 404:
                    raise
                names = set()
            cached = (now, names)
            self._served[api_version] = cached
        return plural in cached[1]


async def gather_limited(
    limit: int, items: Iterable[T], call: Callable[[T], Awaitable[R]]
) -> list[R | BaseException]:
    """call(item) for every item with at most `limit` in flight, results in order, each
    exception returned in its place (one failed child must not hide the others')."""
    semaphore = asyncio.Semaphore(limit)

    async def run(item: T) -> R:
        # The coroutine is made only once a slot is free, so a cancelled gather leaves
        # no never-awaited coroutines behind.
        async with semaphore:
            return await call(item)

    return list(await asyncio.gather(*(run(i) for i in items), return_exceptions=True))
