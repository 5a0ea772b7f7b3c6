"""Window reads answered from memory while their table has not been written since.

Every write to a window or session table is announced on the table's channel
(`serving.changes_channel`): the workers end each batch's pipeline, after its fenced
scripts, with a PUBLISH there (`RedisTableSink.announce`). The API keeps
the answers of recent key-window reads and serves one again only while no announcement
for its table arrived since that read was sent. So a hot key costs no Redis round trip.

Why that is never stale after a write: Redis writes its pending replies out newest
client first, and the pipeline's last PUBLISH gives the subscriber (this process) its
message after the writer's script replies were queued; so the subscriber's message is on
its socket before the writer has its last reply, i.e. before the write has returned.
Before answering from memory the API reads whatever its subscription socket holds (one
non-blocking recv, no round trip), so a request sent once a write has returned meets its
announcement. (A PUBLISH inside the scripts would not do: the subscriber would be queued
before the writer's reply, and written after it; the test caught that under load.)

What announcements cannot cover is bounded: an answer is kept at most MAX_AGE_S (a window
expired by its TTL, a write by anything but a worker, data deleted behind the workers'
backs), everything is dropped
while the subscription is down or reconnecting, and only on plain `redis://` (a TLS
socket cannot be drained without blocking this way; such deployments read Redis every
time, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import time
from typing import Any

import hiredis

from flowmill_api.redis_pool import Arg, RedisPool, pack

log = logging.getLogger("flowmill.api")

MAX_AGE_S = 1.0
"""The longest an answer is served from memory, whatever the announcements say."""
MAX_ENTRIES = 50_000
"""Per table; past it the table's answers are dropped (a crude bound, hot keys refill)."""


class VersionWatch:
    """Follows the write announcements of a set of tables and keeps answers between them."""

    def __init__(self, pool: RedisPool, channels: list[str]) -> None:
        self.pool = pool
        self.channels = sorted(set(channels))
        self.enabled = pool.ssl is None and bool(self.channels)
        self.generation: dict[str, int] = {}
        """Channel -> announcements seen (the table's local write version)."""
        self.epoch = 0
        """Bumped whenever the subscription is lost or made: no answer read before crosses it."""
        self.answers: dict[str, dict[Any, tuple[tuple[int, int], float, Any]]] = {}
        """Channel -> request -> ((epoch, generation) when read, monotonic time, answer)."""
        self._sock: socket.socket | None = None
        self._parser: Any = None
        self._readable: select.poll | None = None
        """Polls the subscription socket: asking it costs a third of a recv that finds
        nothing (which raises), and every answer from memory asks first."""
        self._task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    # -- serving ------------------------------------------------------------------------

    def get(self, channel: str, request: Any) -> Any | None:
        """The answer kept for `request`, if no write was announced since; else None."""
        entry = self.entry(channel, request)
        return None if entry is None else entry[2]

    def entry(self, channel: str, request: Any) -> tuple[tuple[int, int], float, Any] | None:
        """What get() answers from, the same object until it is dropped or read again
        (so a rendering of it may be kept while it is the one); None when get() is."""
        if self._sock is None:
            return None
        self._drain()
        table = self.answers.get(channel)
        entry = None if table is None else table.get(request)
        if entry is None:
            return None
        if entry[0] != self.token(channel) or time.monotonic() - entry[1] > MAX_AGE_S:
            return None
        return entry

    def token(self, channel: str) -> tuple[int, int]:
        """Taken before a read is sent; put() keeps the answer only if it still holds."""
        return self.epoch, self.generation.get(channel, 0)

    def put(
        self, channel: str, request: Any, token: tuple[int, int], read_at: float, answer: Any
    ) -> None:
        """Keep an answer whose read was sent under `token` (at monotonic `read_at`)."""
        if self._sock is None:
            return
        self._drain()
        if token != self.token(channel):
            return  # a write was announced while it was read: it may predate the write
        table = self.answers.setdefault(channel, {})
        if len(table) >= MAX_ENTRIES:
            table.clear()
        table[request] = (token, read_at, answer)

    # -- the subscription ---------------------------------------------------------------

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop()

    async def _follow(self) -> None:
        """Subscribe, learn the versions, follow them; after a failure start over."""
        delay = 0.1
        while True:
            try:
                await self._subscribe()
                delay = 0.1
                assert self._closed is not None
                await self._closed
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: no cache until subscribed again
                log.debug("version subscription: %s", err)
            self._drop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _subscribe(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.pool
        sock = socket.socket(socket.AF_INET6 if ":" in p.host else socket.AF_INET)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (p.host, p.port)), p.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = hiredis.Reader(encoding="utf-8", errors="replace")
            commands: list[tuple[Arg, ...]] = []
            if p.password is not None:
                commands.append(
                    ("AUTH", p.username, p.password) if p.username else ("AUTH", p.password)
                )
            commands.append(("SUBSCRIBE", *self.channels))
            await loop.sock_sendall(sock, b"".join(pack(c) for c in commands))
            expected = len(commands) - 1 + len(self.channels)
            while expected:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), p.timeout)
                if not data:
                    raise ConnectionError("Redis closed the version subscription")
                parser.feed(data)
                while expected and (reply := parser.gets()) is not False:
                    if isinstance(reply, hiredis.ReplyError):
                        raise ConnectionError(f"version subscription refused: {reply}")
                    expected -= 1
        except BaseException:
            sock.close()
            raise
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        self._sock, self._parser, self._readable = sock, parser, readable
        self._closed = loop.create_future()
        loop.add_reader(sock, self._drain)
        self.epoch += 1
        self._drain(polled=False)  # anything that came with the last confirmation

    def _drain(self, polled: bool = True) -> None:
        """Apply every announcement already on the socket (non-blocking); `polled` False
        also applies those the parser holds already (read with the confirmations)."""
        sock, readable = self._sock, self._readable
        if sock is None or readable is None:
            return
        if polled and not readable.poll(0):
            return  # nothing arrived (a closed or failed socket polls ready: recv tells)
        parser = self._parser
        try:
            while True:
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    raise ConnectionError("Redis closed the version subscription")
                parser.feed(data)
                if len(data) < 1 << 16:
                    break
            while (reply := parser.gets()) is not False:
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                    channel = reply[1]
                    self.generation[channel] = self.generation.get(channel, 0) + 1
                    self.answers.pop(channel, None)
        except (OSError, hiredis.ProtocolError) as err:
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        closed = self._closed
        self._drop()
        log.debug("version subscription lost: %s", err)
        if closed is not None and not closed.done():
            closed.set_result(None)  # _follow subscribes again

    def _drop(self) -> None:
        """Forget every answer: nothing is served from memory until the subscription is
        back (the new epoch refuses answers read before)."""
        sock, self._sock, self._readable = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock)
            sock.close()
        self.epoch += 1
        self.answers.clear()
