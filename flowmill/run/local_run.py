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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

from flowmill.connections import ENV_BOOTSTRAP, ENV_REDIS_URL
from flowmill.local.ports import LOOPBACK, free_port, free_ports, port_open, tail
from flowmill.manifest import load_pipeline
from flowmill.run.gbfs_server import GbfsServer
from flowmill.run.plan import ChildSpec, Connections, children_of
from flowmill.run.stats import Rates, Sample, Scraper
from flowmill.run.status_table import RowStatus, RunStatus
from flowmill.run.supervisor import Child, Supervisor
from flowmill.run.topics import ensure_topics, topics_of

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
_MONITOR_TICK = 0.25
_SCRAPE_EVERY = 1.0


class RunFailed(RuntimeError):
    """The run could not start; the message says why and what to do."""


class LocalRun:
    """Runs one Pipeline locally; use as a context manager or call start() and stop()."""

    def __init__(
        self,
        manifest: str | os.PathLike[str],
        *,
        bootstrap_servers: str | None = None,
        redis_url: str | None = None,
        api_port: int = 8000,
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
        self._given_bootstrap = bootstrap_servers or os.environ.get(ENV_BOOTSTRAP)
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
        self._rates: dict[str, Rates] = {}
        self._rate_now: dict[str, tuple[float, float]] = {}
        self._samples: dict[str, Sample] = {}
        self._status: RunStatus | None = None
        self._status_lock = threading.Lock()
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None
        self._stopped = False
        self.conn: Connections | None = None

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.conn = Connections(self._start_kafka(), self._start_redis())
            ensure_topics(self.conn.bootstrap_servers, topics_of(self.pipeline))
            self._start_gbfs()
            self._start_children(self.conn)
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(target=self._watch, name="flowmill-run", daemon=True)
        self._monitor.start()
        return self

    def stop(self) -> None:
        """Stop children (SIGTERM, then SIGKILL after the grace period), then the local
        GBFS feed, Redis and Kafka. Safe to call twice and from a failed start()."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_monitor.set()
        if self._monitor is not None:
            self._monitor.join(10)
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
        with self._status_lock:
            if self._status is not None:
                return self._status
        return self._build_status()

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
                    + tail(self.log_dir / _log_name(r), 5).replace("\n", "\n    ")
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

    def _start_children(self, conn: Connections) -> None:
        specs = children_of(self.pipeline, self.with_api)
        if self.with_api:
            if self.api_port == 0:
                self.api_port = free_port()
            elif port_open(self.api_port):
                raise RunFailed(
                    f"port {self.api_port} is in use; pass --api-port N (0 picks a free port)"
                )
        workers = [s for s in specs if s.kind != "api"]
        ports = dict(zip([s.label for s in workers], free_ports(len(workers)), strict=True))
        self.supervisor = Supervisor(self.manifest, self.workdir, conn, self.log_dir, self._notify)
        for spec in specs:
            self.supervisor.add(spec, self.api_port if spec.kind == "api" else ports[spec.label])
        self.supervisor.start_all()

    # -- watching -------------------------------------------------------------------

    def _watch(self) -> None:
        scraper = Scraper()
        next_scrape = 0.0
        try:
            while not self._stop_monitor.is_set():
                assert self.supervisor is not None
                self.supervisor.check()
                if time.monotonic() >= next_scrape:
                    next_scrape = time.monotonic() + _SCRAPE_EVERY
                    self._scrape(scraper)
                    status = self._build_status()
                    with self._status_lock:
                        self._status = status
                self._stop_monitor.wait(_MONITOR_TICK)
        except Exception:  # the run goes on without a table rather than dying silently
            log.exception("the status monitor failed")
        finally:
            scraper.close()

    def _scrape(self, scraper: Scraper) -> None:
        assert self.supervisor is not None
        at = time.monotonic()
        for child in self.supervisor.children:
            label = child.spec.label
            if not child.alive:
                self._samples[label] = Sample()
                continue
            sample = (
                scraper.api(child.port) if child.spec.kind == "api" else scraper.worker(child.port)
            )
            self._samples[label] = sample
            if sample.events_in is not None or sample.events_out is not None:
                rates = self._rates.setdefault(label, Rates())
                self._rate_now[label] = rates.add(
                    at, sample.events_in or 0.0, sample.events_out or 0.0
                )

    def _build_status(self) -> RunStatus:
        rows = []
        if self.supervisor is not None:
            rows = [self._row(child) for child in self.supervisor.children]
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
            rows=rows,
            extras=extras,
        )

    def _row(self, child: Child) -> RowStatus:
        spec = child.spec
        sample = self._samples.get(spec.label, Sample())
        if child.restart_at is not None:
            state = "restarting"
        elif not child.alive:
            state = "stopped" if self._stopped else ("exited" if child.proc else "starting")
        elif sample.ready:
            state = "done" if sample.detail.startswith("finished") else "ready"
        else:
            state = "starting"
        rate_in, rate_out = self._rate_now.get(spec.label, (None, None))
        return RowStatus(
            label=spec.label,
            kind=spec.kind,
            state=state,
            pid=child.pid,
            restarts=child.restarts,
            rate_in=rate_in,
            rate_out=rate_out,
            events_in=sample.events_in,
            events_out=sample.events_out,
            lag=sample.lag,
            dead=sample.failed,
            detail=sample.detail,
        )

    def _notify(self, message: str) -> None:
        self.events.append(message)
        if self._notify_user is not None:
            self._notify_user(message)
        else:
            log.info("%s", message)


def _log_name(row: RowStatus) -> str:
    return ChildSpec(row.kind, row.label.split("/", 1)[-1]).log_name  # type: ignore[arg-type]
