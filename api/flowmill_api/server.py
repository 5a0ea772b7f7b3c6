"""How the API is served: uvicorn, with the limits it lacks for clients that are slow or
silent on purpose, and X-Forwarded-For believed only from configured proxies.

uvicorn times out an idle keep-alive connection (timeout_keep_alive) but not one that
never completes its request headers: a fresh connection that sends nothing, or sends a
header byte every few seconds (slowloris), is held for ever, and 3,000 of them were held
for 60 s. Its limit_concurrency answers 503 to *every* request once the count is
reached, existing clients' too. So the HTTP protocol is uvicorn's own (httptools) with
two additions: a header deadline from the moment a connection opens (and again after
each response) to its headers' end, and a connection limit enforced when a connection
is accepted, with a 503 to the newcomer only. Other servers were weighed: hypercorn has
no header deadline either; granian has one (http1 header_read_timeout) but would replace
the server the fast path and live streams were measured on; this is 40 lines on top.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from flowmill.spec.launch import API_HEADER_TIMEOUT_S, API_MAX_CONNECTIONS, EXIT_UNCLOSED

HEADER_TIMEOUT_S = API_HEADER_TIMEOUT_S
"""From a connection's opening (or its previous response) to the end of its next
request's headers."""
KEEP_ALIVE_S = 5
"""An idle keep-alive connection is closed after this long (uvicorn's own setting)."""
MAX_CONNECTIONS = API_MAX_CONNECTIONS
"""Open connections (live streams included) per API process; beyond, a new connection
is answered 503 and closed, while those already open are served."""
MAX_INCOMPLETE_EVENT_BYTES = 64 * 1024
"""Request line and headers larger than this are refused (h11's limit, for --http h11)."""


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = HEADER_TIMEOUT_S
    keep_alive_s: int = KEEP_ALIVE_S
    max_connections: int = MAX_CONNECTIONS
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks whose X-Forwarded-For is believed (the right-most address
    not in them is the client); empty: the socket's peer is the client, whatever a
    request claims."""


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """`10.0.0.0/8,127.0.0.1` as a tuple of networks; ValueError names a bad entry."""
    entries = tuple(item.strip() for item in text.split(",") if item.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"--trusted-proxies: {entry!r} is not an IP address or network"
            ) from None
    return entries


def _busy_response() -> bytes:
    body = orjson.dumps(
        {"error": "too_many_connections", "detail": "the server is at its connection limit"}
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: 1\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Collected:
    """Stands in for the transport while one response's head and first body part are
    rendered, so both leave in one write."""

    __slots__ = ("closed", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.closed = True


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle sending a response's head with its first body part in one
    transport write: uvicorn writes them apart, i.e. two send() calls and two packets
    per response (the bare app of benchmarks/bench_api.py costs 63 us of CPU a request
    on this server, 82 us on stock uvicorn, side by side on one machine). Only a
    head with a content-length waits (its body comes right after); a streamed answer's
    head (live updates) goes out at once. uvicorn renders and checks both messages as it
    always does; only the writes are joined."""

    held: Any = None
    """The head waiting for its body (an ASGI http.response.start message)."""

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            # A second head replaces an unwritten first: uvicorn's 500 after an app failed.
            self.held = None
            for name, _ in message.get("headers", ()):
                if name.lower() == b"content-length":
                    self.held = message
                    return
        held, self.held = self.held, None
        if held is None:
            await super().send(message)
            return
        transport, collected = self.transport, _Collected()
        self.transport = cast(asyncio.Transport, collected)
        try:
            await super().send(held)
            await super().send(message)
        finally:
            self.transport = transport
        if collected.parts:
            transport.write(b"".join(collected.parts))
        if collected.closed:
            transport.close()


def limited_protocol(limits: ServerLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the header deadline, the connection limit and
    one write per response (OneWriteCycle)."""
    busy = _busy_response()

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        header_timer: asyncio.TimerHandle | None = None
        header_due: float | None = None
        """When the awaited headers are late (loop time); None while none are awaited."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()
            if type(self.cycle) is RequestResponseCycle:
                self.cycle.__class__ = OneWriteCycle  # built by uvicorn's code just above

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            super().connection_lost(exc)

        # One timer per connection, moved only when it fires: arming and disarming on
        # every request just set header_due (a timer per request cost a heap push and a
        # cancel each time).
        def _arm_header_deadline(self) -> None:
            self.header_due = self.loop.time() + limits.header_timeout_s
            if self.header_timer is None:
                self.header_timer = self.loop.call_at(self.header_due, self._header_timer_fired)

        def _disarm_header_deadline(self) -> None:
            self.header_due = None

        def _header_timer_fired(self) -> None:
            self.header_timer = None
            due = self.header_due
            if due is None:
                return  # no headers awaited; the next arming starts a timer
            if self.loop.time() < due:
                self.header_timer = self.loop.call_at(due, self._header_timer_fired)
                return
            self.header_due = None
            if not self.transport.is_closing():
                self.transport.close()

    return LimitedHttpToolsProtocol


def server_config(
    app: Any, host: str, port: int, limits: ServerLimits, **kwargs: Any
) -> uvicorn.Config:
    """The uvicorn configuration of `flowmill api` (and of the tests' API servers)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=limited_protocol(limits),
        timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT_BYTES,
        proxy_headers=bool(limits.trusted_proxies),
        forwarded_allow_ips=list(limits.trusted_proxies) or None,
        **kwargs,
    )


LIFESPAN_STOP_S = 5.0
"""Beyond the connections' grace, what the app's own shutdown (closing Redis and Kafka
clients) may take before the process exits anyway; inside the pod's slack
(STOP_GRACE_SLACK_S), so the API always ends by itself before the kubelet's SIGKILL."""


class BoundedServer(uvicorn.Server):
    """uvicorn's server with a deadline on its stop. uvicorn bounds the wait for open
    connections (timeout_graceful_shutdown) but not the app's shutdown: a client whose
    server is gone (`flowmill run` killed with its Redis) could hold the process for ever."""

    _deadline: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._deadline is None:
            grace = float(self.config.timeout_graceful_shutdown or 0) + LIFESPAN_STOP_S
            self._deadline = threading.Timer(grace, _exit_late, args=(grace,))
            self._deadline.daemon = True
            self._deadline.start()
        super().handle_exit(sig, frame)


def _exit_late(grace: float) -> None:
    logging.getLogger("flowmill.api").error(
        "the API did not stop within %gs of the stop signal; exiting with code %d",
        grace,
        EXIT_UNCLOSED,
    )
    sys.stderr.flush()
    os._exit(EXIT_UNCLOSED)  # the loop is what hangs: no atexit, no asyncio shutdown
