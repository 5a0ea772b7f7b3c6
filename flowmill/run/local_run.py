"""LocalRun: a whole Pipeline on this machine, as `flowmill run` and the tests run it.

What it does, in order: start the embedded Kafka broker and Redis server unless given;
create the Pipeline's topics (and each join step's changelog); start the local GBFS feed
a manifest asks for; start one child process per source, per step and for the API; then
watch them from a monitor thread (restart what crashes, scrape what the status table
shows). stop() undoes it all in reverse, leaving no process behind.

Children run with the manifest's folder as working directory, so relative paths in the
manifest (a fileReplay file, a Parquet lake) resolve against the manifest, wherever
`flowmill run` was started from.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

from flowmill.local.ports import LOOPBACK, StartStop, free_port, free_ports, port_open, tail
from flowmill.manifest import load_pipeline
from flowmill.run.gbfs_server import GbfsServer
from flowmill.run.monitor import Monitor
from flowmill.run.plan import Connections, children_of
from flowmill.run.status_table import RunStatus
from flowmill.run.supervisor import Supervisor
from flowmill.run.topics import TopicMismatch, ensure_topics
from flowmill.spec import API_PORT, ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, all_topics

if TYPE_CHECKING:
    from flowmill.local.kafka import EmbeddedKafka
    from flowmill.local.redis import EmbeddedRedis

log = logging.getLogger("flowmill.run")

LOCAL_GBFS_ANNOTATION = "flowmill.dev/local-gbfs"
"""On a Pipeline: a folder (relative to the manifest) whose feed.json `flowmill run`
serves as a GBFS feed at the host and port of the manifest's loopback httpPoll URLs."""
DASHBOARD_PATH = "/dashboard"
DOCS_PATH = "/docs"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class RunFailed(RuntimeError):
    """The run could not start; the message says why and what to do."""


class LocalRun(StartStop):
    """Runs one Pipeline locally; use as a context manager or call start() and stop()."""

    def __init__(
        self,
        manifest: str | os.PathLike[str],
        *,
        bootstrap_servers: str | None = None,
        redis_url: str | None = None,
        api_port: int = API_PORT,
        with_api: bool = True,
        data_dir: str | os.PathLike[str] | None = None,
        notify: Callable[[str], None] | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        self.manifest = Path(manifest).resolve()
        self.pipeline = load_pipeline(self.manifest)
        self.workdir = self.manifest.parent
        self.data_dir = (
            Path(data_dir).resolve()
            if data_dir is not None
            else Path.cwd() / ".flowmill" / self.pipeline.name
        )
        self.log_dir = self.data_dir / "logs"
        self._given_bootstrap = bootstrap_servers or os.environ.get(ENV_BOOTSTRAP_SERVERS)
        self._given_redis = redis_url or os.environ.get(ENV_REDIS_URL)
        self.api_port = api_port
        self.with_api = with_api and self.pipeline.spec.api.enabled
        self.stop_grace = stop_grace
        self.events: list[str] = []
        """What happened during the run (crashes, restarts), oldest first."""
        self._notify_user = notify
        self._kafka: EmbeddedKafka | None = None
        self._redis: EmbeddedRedis | None = None
        self.gbfs: GbfsServer | None = None
        self.supervisor: Supervisor | None = None
        self.monitor: Monitor | None = None
        self._stopped = False
        self.conn: Connections | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._claim_api_port()  # before the broker: a busy port should fail in a second
            self.conn = Connections(self._start_kafka(), self._start_redis())
            self._create_topics(self.conn.bootstrap_servers)
            self._start_gbfs()
            self._start_children(self.conn)
            assert self.supervisor is not None
            self.monitor = Monitor(self.supervisor, self._header)
            self.monitor.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop children (SIGTERM, then SIGKILL after the grace period), then the local
        GBFS feed, Redis and Kafka. Safe to call twice and from a failed start()."""
        if self._stopped:
            return
        self._stopped = True
        if self.monitor is not None:
            self.monitor.stop()
        if self.supervisor is not None:
            self.supervisor.stop_all(self.stop_grace)
        if self.gbfs is not None:
            self.gbfs.stop()
        for server in (self._redis, self._kafka):
            if server is not None:
                server.stop()

    def kill(self) -> None:
        """SIGKILL every child now; stop() still has to run afterwards."""
        if self.supervisor is not None:
            self.supervisor.kill_all()

    # -- what the run offers --------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        assert self.conn is not None, "the run has not started"
        return self.conn.bootstrap_servers

    @property
    def redis_url(self) -> str:
        assert self.conn is not None, "the run has not started"
        return self.conn.redis_url

    @property
    def api_url(self) -> str | None:
        return f"http://{LOOPBACK}:{self.api_port}" if self.with_api else None

    @property
    def dashboard_url(self) -> str | None:
        return f"{self.api_url}{DASHBOARD_PATH}" if self.api_url else None

    def status(self) -> RunStatus:
        """The newest snapshot of the status table (refreshed every second)."""
        return self.monitor.status() if self.monitor is not None else self._header()

    def child_pids(self) -> list[int]:
        """pids of the running children (not the Kafka and Redis servers)."""
        return self.supervisor.pids() if self.supervisor else []

    def wait_ready(self, timeout: float = 60.0) -> RunStatus:
        """Until every child answers /readyz with 200; TimeoutError names the laggards."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status.all_ready:
                return status
            if time.monotonic() > deadline:
                waiting = [r for r in status.rows if r.state not in ("ready", "done")]
                details = "\n".join(
                    f"  {r.label}: {r.state} {r.detail}\n    "
                    + tail(Path(r.log_path), 5).replace("\n", "\n    ")
                    for r in waiting
                )
                raise TimeoutError(f"not ready after {timeout:.0f}s:\n{details}")
            time.sleep(0.2)

    # -- starting -------------------------------------------------------------------

    def _start_kafka(self) -> str:
        if self._given_bootstrap:
            return self._given_bootstrap
        from flowmill.local.kafka import EmbeddedKafka

        kafka_dir = self.data_dir / "kafka"
        # Fresh every run: Redis is in memory, so old topics would not match the tables.
        shutil.rmtree(kafka_dir, ignore_errors=True)
        self._notify("starting Kafka (embedded, KRaft) ...")
        kafka = EmbeddedKafka(data_dir=kafka_dir)
        self._kafka = kafka
        kafka.start()
        return kafka.bootstrap_servers

    def _start_redis(self) -> str:
        if self._given_redis:
            _check_redis(self._given_redis)
            return self._given_redis
        from flowmill.local.redis import EmbeddedRedis

        redis = EmbeddedRedis()
        self._redis = redis
        redis.start()
        return redis.url

    def _start_gbfs(self) -> None:
        folder_name = self.pipeline.metadata.annotations.get(LOCAL_GBFS_ANNOTATION)
        if not folder_name:
            return
        folder = (self.workdir / folder_name).resolve()
        targets = set()
        for source in self.pipeline.spec.sources:
            if source.http_poll is not None:
                url = urlsplit(source.http_poll.url)
                if url.hostname in _LOOPBACK_NAMES:
                    targets.add(url.port or 80)
        if not targets:
            raise RunFailed(
                f"{LOCAL_GBFS_ANNOTATION} is set but no httpPoll source polls "
                "127.0.0.1 or localhost"
            )
        if len(targets) > 1:
            raise RunFailed(f"httpPoll sources poll several local ports {sorted(targets)}; use one")
        port = targets.pop()
        if port_open(port):
            raise RunFailed(
                f"port {port}, where the manifest expects its local GBFS feed, is in use"
            )
        self.gbfs = GbfsServer(folder, LOOPBACK, port)
        self.gbfs.start()

    def _claim_api_port(self) -> None:
        if not self.with_api:
            return
        if self.api_port == 0:
            self.api_port = free_port()
        elif port_open(self.api_port):
            raise RunFailed(
                f"port {self.api_port} is in use; pass --api-port N (0 picks a free port)"
            )

    def _create_topics(self, bootstrap_servers: str) -> None:
        try:
            ensure_topics(bootstrap_servers, all_topics(self.pipeline))
        except (TopicMismatch, TimeoutError):
            raise
        except Exception as err:  # kafka-python's errors share no useful base class
            detail = str(err) if str(err) not in ("", type(err).__name__) else ""
            raise RunFailed(
                f"could not create topics on Kafka at {bootstrap_servers}: "
                f"{type(err).__name__} {detail}".rstrip()
            ) from err

    def _start_children(self, conn: Connections) -> None:
        specs = children_of(self.pipeline, self.with_api)
        workers = [s for s in specs if s.kind != "api"]
        ports = dict(zip([s.label for s in workers], free_ports(len(workers)), strict=True))
        self.supervisor = Supervisor(self.manifest, self.workdir, conn, self.log_dir, self._notify)
        for spec in specs:
            self.supervisor.add(spec, self.api_port if spec.kind == "api" else ports[spec.label])
        self.supervisor.start_all()

    def _header(self) -> RunStatus:
        extras = []
        if self.gbfs is not None:
            extras.append(f"GBFS feed  {self.gbfs.url}/gbfs.json (serving {self.gbfs.folder})")
        conn = self.conn
        return RunStatus(
            pipeline=self.pipeline.name,
            bootstrap_servers=conn.bootstrap_servers if conn else "-",
            redis_url=conn.redis_url if conn else "-",
            api_url=self.api_url,
            dashboard_url=self.dashboard_url,
            docs_url=f"{self.api_url}{DOCS_PATH}" if self.api_url else None,
            log_dir=str(self.log_dir),
            extras=extras,
        )

    def _notify(self, message: str) -> None:
        self.events.append(message)
        if self._notify_user is not None:
            self._notify_user(message)
        else:
            log.info("%s", message)


def _check_redis(url: str) -> None:
    """Fail now, with the URL, rather than have every step crash-loop on it."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3) as client:
            client.ping()
    except redis.RedisError as err:
        raise RunFailed(f"Redis at {url} does not answer: {err}") from err
