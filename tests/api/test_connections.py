"""Clients that are slow, silent or lying (issue #15 part 6), over real sockets: a silent
connection and a slow-header (slowloris) one are closed by the header deadline; beyond
the connection limit a newcomer gets 503 while an open keep-alive client is still
served; the rate limit's client is the socket's peer, whatever X-Forwarded-For says,
unless that peer is a configured proxy."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from flowmill.local.redis import EmbeddedRedis
from flowmill_api.server import ServerLimits
from tests.api.harness import ApiServer, build_pipeline, serve
from tests.harness.waiting import wait_for

HEADER_TIMEOUT = 1.0
MARGIN = 2.0


@pytest.fixture(scope="module")
def redis_url(redis_server: EmbeddedRedis) -> str:
    if not redis_server.running:
        redis_server.start()
    return redis_server.url


def _connect(server: ApiServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _closed_after(sock: socket.socket, drip: bytes = b"") -> float:
    """Seconds until the server closes `sock`, sending `drip` a byte every 0.2 s."""
    started = time.monotonic()
    sock.settimeout(0.2)
    sent = 0
    while time.monotonic() - started < 30:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if sent < len(drip):
            try:
                sock.send(drip[sent : sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
    raise AssertionError("the server kept the connection for 30 s")


def test_silent_and_slow_header_connections_are_closed(redis_url: str) -> None:
    limits = ServerLimits(header_timeout_s=HEADER_TIMEOUT)
    with serve([build_pipeline("conn")], redis_url, limits) as server:
        with _connect(server) as silent:
            assert _closed_after(silent) < HEADER_TIMEOUT + MARGIN
        slow = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
        with _connect(server) as slowloris:
            # Still sending when closed: each byte arrives well within any read timeout.
            assert _closed_after(slowloris, slow) < HEADER_TIMEOUT + MARGIN
        # A prompt client on a kept-alive connection is served again and again.
        with httpx.Client(base_url=server.url) as http:
            for _ in range(3):
                assert http.get("/healthz").status_code == 200
                time.sleep(HEADER_TIMEOUT / 2)


def test_beyond_the_connection_limit_newcomers_get_503(redis_url: str) -> None:
    limit = 8
    limits = ServerLimits(header_timeout_s=60, max_connections=limit)
    with (
        serve([build_pipeline("conn")], redis_url, limits) as server,
        httpx.Client(base_url=server.url) as fast,
    ):
        assert fast.get("/healthz").status_code == 200  # its connection is open
        idle = [_connect(server) for _ in range(limit - 1)]
        try:
            # The server counts a connection once it accepted it: wait until a newcomer
            # is turned away.
            def refused() -> bytes:
                with _connect(server) as newcomer:
                    newcomer.settimeout(5)
                    return newcomer.recv(4096)

            answer = wait_for(refused, 10, "a 503 to a connection beyond the limit")
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"too_many_connections" in answer and b"retry-after: 1" in answer
            # The client already connected is still served, on its kept-alive connection.
            assert all(fast.get("/healthz").status_code == 200 for _ in range(5))
        finally:
            for sock in idle:
                sock.close()
        wait_for(
            lambda: httpx.get(f"{server.url}/healthz").status_code == 200,
            10,
            "new connections served again once the idle ones closed",
        )


def _statuses(server: ApiServer, forwarded: list[str]) -> list[int]:
    with httpx.Client(base_url=server.url) as http:
        return [
            http.get("/pipelines", headers={"X-Forwarded-For": addr}).status_code
            for addr in forwarded
        ]


def test_a_rotating_x_forwarded_for_does_not_escape_the_rate_limit(redis_url: str) -> None:
    forged = [f"203.0.113.{i}" for i in range(20)]
    with serve([build_pipeline("xff")], redis_url, rate_limit=2) as server:
        statuses = _statuses(server, forged)
    # One client (the socket's peer): its burst of 2, then refused, whatever it claims.
    assert statuses[:2] == [200, 200] and statuses.count(429) >= 15, statuses


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(
    redis_url: str,
) -> None:
    limits = ServerLimits(trusted_proxies=("127.0.0.0/8",))
    with serve([build_pipeline("xff")], redis_url, limits, rate_limit=2) as server:
        distinct = _statuses(server, [f"203.0.113.{i}" for i in range(20)])
        # The right-most untrusted address is the client: a forged left part is ignored.
        chained = _statuses(server, [f"198.51.100.{i}, 192.0.2.7" for i in range(6)])
    assert distinct == [200] * 20, distinct
    assert chained[:2] == [200, 200] and chained[2:].count(429) >= 3, chained
