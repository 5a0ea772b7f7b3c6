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

from flowmill.connections import with_redis_credentials
from flowmill.kafka_security import (
    PLAINTEXT,
    KafkaClientSecurity,
    KafkaSecurityInvalid,
    refusal_sync,
)
from flowmill.local.ports import LOOPBACK, StartStop, free_port, free_ports, port_open, tail
from flowmill.manifest import load_pipeline
from flowmill.redact import redact_text, redact_url, secrets_in_environment, url_password
from flowmill.run.control import Control
from flowmill.run.gbfs_server import GbfsServer
from flowmill.run.monitor import Monitor
from flowmill.run.plan import Connections, children_of
from flowmill.run.status_table import RunStatus
from flowmill.run.supervisor import Supervisor
from flowmill.run.topics import TopicMismatch, ensure_topics
from flowmill.spec import API_PORT, ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, all_topics
from flowmill.spec.launch import (
    ENV_API_RUN_STATUS,
    KAFKA_SECURITY_ENV,
    TERMINATION_GRACE_PERIOD_S,
)

if TYPE_CHECKING:
    from flowmill.local.kafka import EmbeddedKafka
    from flowmill.local.redis import EmbeddedRedis

log = logging.getLogger("flowmill.run")

LOCAL_GBFS_ANNOTATION = "flowmill.dev/local-gbfs"
"""On a Pipeline: a folder (relative to the manifest) whose feed.json `flowmill run`
serves as a GBFS feed at the host and port of the manifest's loopback httpPoll URLs."""
DASHBOARD_PATH = "/dashboard"
HEALTH_PATH = "/dashboard/health"
STATUS_FILE = "status.json"
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
        stop_grace: float = TERMINATION_GRACE_PERIOD_S,
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
        self.status_file = self.data_dir / STATUS_FILE
        """The status table as JSON, rewritten every second (the API's health view)."""
        self._given_bootstrap = bootstrap_servers or os.environ.get(ENV_BOOTSTRAP_SERVERS)
        self.kafka_security = PLAINTEXT
        """An external Kafka's TLS/SASL (FLOWMILL_KAFKA_*, as the workers read it); the
        embedded broker is plaintext."""
        given_redis = redis_url or os.environ.get(ENV_REDIS_URL)
        # FLOWMILL_REDIS_PASSWORD and the TLS files of the environment, as a worker reads them.
        self._given_redis = with_redis_credentials(given_redis) if given_redis else None
        self._secrets = secrets_in_environment()
        if self._given_redis and (password := url_password(self._given_redis)):
            self._secrets.add(password)
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
        self.control: Control | None = None
        """Carries out flowmill pause, resume and replay (run/control.py)."""
        self._stopped = False
        self.conn: Connections | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._claim_api_port()  # before the broker: a busy port should fail in a second
            self.conn = Connections(self._start_kafka(), self._start_redis())
            self._create_topics(self.conn.bootstrap_servers)
            self._start_gbfs()
            self._start_children(self.conn)
            assert self.supervisor is not None
            self.monitor = Monitor(self.supervisor, self._header, self.status_file)
            self.monitor.start()
            assert self.conn is not None
            self.control = Control(
                self.data_dir,
                self.pipeline,
                self.supervisor,
                self.conn,
                self.kafka_security,
                self.stop_grace,
                self._notify,
            )
            self.control.start()
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
        # Children before the monitor: it restarts crashed ones, and a child dies with
        # the thread that started it (PR_SET_PDEATHSIG), so that thread must outlive them.
        if self.supervisor is not None:
            self.supervisor.stop_all(self.stop_grace)
        if self.control is not None:
            self.control.stop()
        if self.monitor is not None:
            self.monitor.stop()
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

    @property
    def health_url(self) -> str | None:
        """The dashboard's health view of this Pipeline."""
        if not self.api_url:
            return None
        return f"{self.api_url}{HEALTH_PATH}?pipeline={self.pipeline.name}"

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
            try:
                self.kafka_security = KafkaClientSecurity.from_env()
            except KafkaSecurityInvalid as err:
                raise RunFailed(str(err)) from None
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
            ensure_topics(
                bootstrap_servers, all_topics(self.pipeline), security=self.kafka_security
            )
        except (TopicMismatch, TimeoutError):
            raise
        except Exception as err:  # kafka-python's errors share no useful base class
            if self.kafka_security.protocol != "PLAINTEXT":
                why = refusal_sync(bootstrap_servers, self.kafka_security)
                if why is not None:
                    raise RunFailed(why) from err
            detail = str(err) if str(err) not in ("", type(err).__name__) else ""
            raise RunFailed(
                f"could not create topics on Kafka at {bootstrap_servers}: "
                f"{type(err).__name__} {detail}".rstrip()
            ) from err

    def _start_children(self, conn: Connections) -> None:
        specs = children_of(self.pipeline, self.with_api)
        workers = [s for s in specs if s.kind != "api"]
        ports = dict(zip([s.label for s in workers], free_ports(len(workers)), strict=True))
        env = dict(os.environ)
        env[ENV_API_RUN_STATUS] = str(self.status_file)
        self.status_file.unlink(missing_ok=True)  # an earlier run's, describing dead pids
        if self._kafka is not None:
            # The embedded broker is plaintext: an external Kafka's security is not for it.
            for variable in KAFKA_SECURITY_ENV:
                env.pop(variable, None)
        self.supervisor = Supervisor(
            self.manifest, self.workdir, conn, self.log_dir, self._notify, env=env
        )
        for spec in specs:
            child = self.supervisor.add(
                spec, self.api_port if spec.kind == "api" else ports[spec.label]
            )
            # spec.paused: the workers wait for `flowmill resume`; the API serves.
            child.paused = bool(self.pipeline.spec.paused) and spec.kind != "api"
        self.supervisor.start_all()

    def _header(self) -> RunStatus:
        extras = []
        if self.gbfs is not None:
            extras.append(f"GBFS feed  {self.gbfs.url}/gbfs.json (serving {self.gbfs.folder})")
        conn = self.conn
        return RunStatus(
            pipeline=self.pipeline.name,
            bootstrap_servers=conn.bootstrap_servers if conn else "-",
            redis_url=redact_url(conn.redis_url) if conn else "-",
            api_url=self.api_url,
            dashboard_url=self.dashboard_url,
            health_url=self.health_url,
            docs_url=f"{self.api_url}{DOCS_PATH}" if self.api_url else None,
            log_dir=str(self.log_dir),
            extras=extras,
        )

    def _notify(self, message: str) -> None:
        message = redact_text(message, self._secrets)  # may quote a child's log
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
        raise RunFailed(f"Redis at {redact_url(url)} does not answer: {err}") from err
