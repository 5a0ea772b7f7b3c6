"""A small async Redis client for the API's reads: a pool of pipelined connections
speaking the Redis protocol (RESP) itself. (HTTP responses are `flowmill_api.responses`.)

Why not redis-py for reads: its per-command work (a pool checkout under a lock, command
packing, a read per reply) cost more CPU than the HTTP handling itself and held one
process to about half the target rate. Here each connection is shared by every request:
a command is written immediately, replies are parsed by hiredis in arrival order and
matched to waiting requests first-in-first-out (Redis answers in order), so concurrent
requests share syscalls without waiting for one another. redis-py still carries the
pub/sub subscription, which this client does not speak.

Errors are redis-py's exception types, error replies included (redis-py's own parser
maps `LOADING …` to BusyLoadingError, `NOSCRIPT …` to NoScriptError, and so on), so one
handler maps every Redis error to 503: a lost connection fails the requests waiting on
it, and the next request reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections import deque
from hashlib import sha1
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float
_WAKE = 0.5
"""Seconds between checks that commands in flight are still being answered."""


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection:
    """One TCP connection with any number of commands in flight."""

    def __init__(self, pool: RedisPool) -> None:
        self.pool = pool
        self.writer: asyncio.StreamWriter | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.reader_task: asyncio.Task[None] | None = None
        self.connecting: asyncio.Lock = asyncio.Lock()
        self.waiting_since = 0.0  # when the oldest unanswered command was sent

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def connect(self) -> None:
        async with self.connecting:
            if self.connected:
                return
            p = self.pool
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(p.host, p.port, ssl=p.ssl), p.timeout
                )
            except (OSError, TimeoutError) as err:
                raise RedisConnectionError(
                    f"cannot connect to Redis at {p.host}:{p.port}: {err}"
                ) from err
            self.writer = writer
            self.reader_task = asyncio.create_task(self._read(reader))
            setup: list[tuple[Arg, ...]] = []
            if p.password is not None:
                setup.append(
                    ("AUTH", p.username, p.password) if p.username else ("AUTH", p.password)
                )
            if p.db:
                setup.append(("SELECT", p.db))
            for command in setup:
                await self.send(command)

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        assert self.writer is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.pending:
            self.waiting_since = loop.time()
        self.pending.append(future)
        self.writer.write(pack(args))
        return future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader(encoding="utf-8", errors="replace")
        error: Exception = RedisConnectionError("connection to Redis closed")
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(1 << 16), _WAKE)
                except TimeoutError:
                    # A Redis that stops answering with commands waiting is an outage.
                    loop = asyncio.get_running_loop()
                    if self.pending and loop.time() - self.waiting_since > self.pool.timeout:
                        error = RedisTimeoutError("Redis did not answer in time")
                        break
                    continue
                if not data:
                    break
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = self.pending.popleft()
                    self.waiting_since = asyncio.get_running_loop().time()
                    if future.done():
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(BaseParser.parse_error(str(reply)))
                    else:
                        future.set_result(reply)
        except (OSError, hiredis.ProtocolError) as err:
            error = RedisConnectionError(f"connection to Redis lost: {err}")
        finally:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader_task
        self._fail(RedisConnectionError("client closed"))


class Script:
    """A Lua script run by its SHA1, loaded again when Redis forgot it (a restart)."""

    def __init__(self, pool: RedisPool, source: str) -> None:
        self.pool = pool
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Arg]) -> Any:
        command = (len(keys), *keys, *args)
        try:
            return await self.pool.execute("EVALSHA", self.sha, *command)
        except NoScriptError:
            return await self.pool.execute("EVAL", self.source, *command)


class RedisPool:
    """`size` pipelined connections, used round-robin; connects lazily and again after a
    failure, so the process serves as soon as Redis is back."""

    def __init__(self, url: str, size: int = 4, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (redis, rediss)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        # As redis-py reads a URL: redis://:secret@host has no user, redis://app@host a
        # user and no password.
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.db = int(path) if path.isdigit() else 0
        self.ssl = _ssl_context(dict(parse_qsl(parts.query))) if parts.scheme == "rediss" else None
        self.timeout = timeout
        self.connections = [_Connection(self) for _ in range(size)]
        self._next = itertools.cycle(self.connections)

    async def execute(self, *args: Arg) -> Any:
        connection = next(self._next)
        if not connection.connected:
            await connection.connect()
        return await connection.send(args)

    async def execute_many(self, *commands: tuple[Arg, ...]) -> list[Any]:
        """Independent commands in one write on one connection (a pipeline)."""
        connection = next(self._next)
        if not connection.connected:
            await connection.connect()
        futures = [connection.send(command) for command in commands]
        # gather, not one await after another: when one fails, the failures of the others
        # are still retrieved (else asyncio logs them as never retrieved).
        return list(await asyncio.gather(*futures))

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


def _ssl_context(params: dict[str, str]) -> ssl.SSLContext:
    """The TLS of a rediss:// URL from redis-py's parameters (which
    flowmill.connections.with_redis_credentials sets): the CA file, else the system's
    trust store, and a client certificate for mutual TLS."""
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    if params.get("ssl_certfile"):
        context.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile"))
    return context
