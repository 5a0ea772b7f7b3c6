"""A real Redis server (the `redis-server` binary scripts/provision.sh installs), in memory
only, on a free loopback port."""

from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import time
from pathlib import Path

import redis

from flowmill.local import find_binary
from flowmill.local.ports import LOOPBACK, StartStop, free_port, spawn, tail, terminate
from flowmill.local.temp_dirs import make_owned_temp_dir

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0


class RedisStartFailed(RuntimeError):
    """redis-server exited or did not answer PING; the message ends with its log."""


class EmbeddedRedis(StartStop):
    """A redis-server process on 127.0.0.1 without persistence.

    The port is chosen once and kept: stop() then start(), or restart(), serve on the same
    port, so clients configured with `url` reconnect to the new server. Data does not survive
    a stop (no RDB, no AOF), as after a crash of a cache-only Redis.
    """

    def __init__(self, port: int | None = None, *, start_timeout: float = START_TIMEOUT) -> None:
        self.port: int = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.start_seconds: float | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        binary = str(find_binary("redis-server"))
        began = time.monotonic()
        # Also removes the temporary dir, which the process-level backstop in ports cannot.
        atexit.register(self.stop)
        self._dir = make_owned_temp_dir("flowmill-redis-")
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            # The log file, not stdout, so that a failure can be shown with its cause.
            "--logfile", str(self._log),
        ]  # fmt: skip
        self._proc = spawn(argv, self._dir / "stdout.log")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        log.info("Redis ready at %s in %.2fs", self.url, self.start_seconds)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self._proc is not None:
            terminate(self._proc, grace=10.0)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self) -> None:
        """Stop and start again on the same port; the data is gone."""
        self.stop()
        self.start()

    def client(self, **kwargs: object) -> redis.Redis:
        """A client for this server (kwargs go to redis.Redis.from_url)."""
        return redis.Redis.from_url(self.url, **kwargs)

    @property
    def _log(self) -> Path:
        assert self._dir is not None
        return self._dir / "redis.log"

    def _wait_ready(self) -> None:
        assert self._proc is not None and self._dir is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        with redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=0.5) as probe:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise self._failure(f"exited with status {self._proc.returncode}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError as err:
                    last_error = err
                time.sleep(0.02)
        raise self._failure(
            f"did not answer PING within {self.start_timeout:.0f}s (last error: {last_error!r})"
        )

    def _failure(self, why: str) -> RedisStartFailed:
        assert self._dir is not None
        logs = "\n".join(t for p in (self._dir / "stdout.log", self._log) if (t := tail(p)))
        return RedisStartFailed(
            f"redis-server on port {self.port} {why}\n{logs or '(no log output)'}"
        )
