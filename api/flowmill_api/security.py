"""Optional API keys and a per-client rate limit, both off unless configured.

Keys come from the environment (the operator maps the Pipeline's `api.apiKeysSecret`
there), so no key ever sits in a manifest. Browsers' EventSource and WebSocket cannot
set headers, hence the `api_key` query parameter. The rate limit is a token bucket per
client (its API key when it sent one, else its address) kept in this process: with N
replicas a client gets at most N times the rate, which is what a per-pod limit can
promise without a shared store.
"""

from __future__ import annotations

import hmac
import math
import time
from urllib.parse import parse_qs

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from flowmill_api.settings import ApiSettings

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")
"""Probes, scraping and documentation never need a key and are never limited."""
OPEN_PREFIXES = ("/dashboard", "/docs/")
"""The dashboard's static files are public; the data they fetch is not."""
MAX_BUCKETS = 10_000


def is_open(path: str) -> bool:
    return path == "/" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_key(scope: Scope) -> str | None:
    """The key a request carries: X-API-Key, Authorization: Bearer, or ?api_key=."""
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    query = scope.get("query_string", b"")
    if b"api_key=" in query:
        found = parse_qs(query.decode("latin-1")).get("api_key")
        if found:
            return found[0]
    return None


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


ADMITTED = "flowmill.admitted"
"""Scope key set once a request passed the Gate (the fast path checks before FastAPI)."""


class Gate:
    """The API key check and the per-client rate, one per app: the fast path in front of
    FastAPI and the SecurityMiddleware inside it share it, so a client has one bucket."""

    def __init__(self, settings: ApiSettings) -> None:
        self.keys = [k.encode() for k in settings.api_keys]
        self.rate = settings.rate_limit
        self.burst = float(settings.rate_burst or max(1, math.ceil(settings.rate_limit or 1)))
        self.buckets: dict[str, _Bucket] = {}

    async def check(self, scope: Scope, send: Send) -> int | None:
        """None when the request may go on; else the status it was answered with."""
        key = presented_key(scope)
        if self.keys and not self._valid(key):
            await _reject(scope, send, 401, "unauthorized", "missing or unknown API key", None)
            return 401
        if self.rate is not None:
            client = f"key:{key}" if key and self.keys else _address(scope)
            wait = self._take(client)
            if wait > 0:
                await _reject(
                    scope,
                    send,
                    429,
                    "rate_limited",
                    f"more than {self.rate:g} requests per second",
                    max(1, math.ceil(wait)),
                )
                return 429
        return None

    def _valid(self, key: str | None) -> bool:
        if not key:
            return False
        given = key.encode()
        # Compare against every key so the time taken does not tell which one matched.
        return sum(hmac.compare_digest(given, k) for k in self.keys) > 0

    def _take(self, client: str) -> float:
        """Seconds until the client may send again (0: allowed now)."""
        assert self.rate is not None
        now = time.monotonic()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            bucket = self.buckets[client] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        assert self.rate is not None
        full = self.burst / self.rate
        for client in [c for c, b in self.buckets.items() if now - b.stamp >= full]:
            del self.buckets[client]
        if len(self.buckets) >= MAX_BUCKETS:
            self.buckets.clear()


class SecurityMiddleware:
    """Checks the API key, then the client's rate; answers 401/429 itself."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or is_open(scope["path"])
            or scope.get(ADMITTED)
            or await self.gate.check(scope, send) is None
        ):
            await self.app(scope, receive, send)


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:unknown"


async def _reject(
    scope: Scope, send: Send, status: int, error: str, detail: str, retry_after: int | None
) -> None:
    if scope["type"] == "websocket":
        # Policy violation (1008) or try again later (1013), before accepting.
        await send({"type": "websocket.close", "code": 1008 if status == 401 else 1013})
        return
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="flowmill"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send(
        {
            "type": "http.response.body",
            "body": orjson.dumps({"error": error, "detail": detail}),
        }
    )
