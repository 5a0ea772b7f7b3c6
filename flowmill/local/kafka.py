"""A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM), started
from the jars scripts/provision.sh resolved into the cache."""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from flowmill.local import ComponentMissing, cache_dir, find_binary
from flowmill.local.ports import LOOPBACK, StartStop, free_ports, port_open, spawn, tail, terminate
from flowmill.local.temp_dirs import make_owned_temp_dir

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
JVM_HEAP = ("-Xms256m", "-Xmx768m")
START_TIMEOUT = 60.0
# When we chose the ports ourselves, another process may take one before the JVM binds it.
_BIND_ATTEMPTS = 3


class KafkaStartFailed(RuntimeError):
    """The broker exited or did not become ready; the message ends with its log."""


def kafka_classpath() -> str:
    """The broker's Java classpath, as resolved by scripts/provision.sh."""
    path = cache_dir() / "kafka" / "classpath.txt"
    what = f"Apache Kafka {KAFKA_VERSION} (broker jars)"
    try:
        classpath = path.read_text().strip()
    except OSError:
        raise ComponentMissing(what, str(path)) from None
    jars = [Path(p) for p in classpath.split(os.pathsep) if p]
    # An emptied Maven repository leaves a classpath.txt naming jars that are gone.
    missing = [j for j in jars if not j.is_file()]
    if not jars or missing:
        raise ComponentMissing(what, f"{path} ({len(missing)} of its jars missing)")
    return classpath


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        # Kafka's own generator avoids a leading '-' too: the CLI would read it as an option.
        if not cid.startswith("-"):
            return cid


class EmbeddedKafka(StartStop):
    """A Kafka broker process on 127.0.0.1, for `flowmill run` and tests.

    Topics are not auto-created (auto_create_topics=False): a producer or consumer that names
    a topic the pipeline never declared then fails instead of quietly creating a one-partition
    topic, which would hide mistakes in topic declarations. Create topics with
    create_topics().

    With data_dir given, the broker's data and logs persist there across stop() and start()
    (the cluster is formatted only once); without it a temporary directory is used and
    removed on stop().
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        auto_create_topics: bool = False,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._persistent_dir = Path(data_dir) if data_dir is not None else None
        self._fixed_port = port
        self.auto_create_topics = auto_create_topics
        self.start_timeout = start_timeout
        self.port: int | None = port
        self.controller_port: int | None = None
        self.data_dir: Path | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("EmbeddedKafka has not been started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def server_log(self) -> Path:
        """The broker's log4j log (WARN and above, plus startup milestones)."""
        return self._require_dir() / "logs" / "server.log"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout and stderr: crashes before log4j is configured land here."""
        return self._require_dir() / "logs" / "console.log"

    def start(self) -> None:
        if self.running:
            return
        classpath = kafka_classpath()
        java = str(find_binary("java"))
        began = time.monotonic()
        if self._persistent_dir is not None:
            self._persistent_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir = self._persistent_dir.resolve()
        else:
            self.data_dir = make_owned_temp_dir("flowmill-kafka-")
        # Also removes a temporary data dir, which the process-level backstop in ports cannot.
        atexit.register(self.stop)
        try:
            self._start_in_dir(java, classpath)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        log.info(
            "Kafka %s ready at %s in %.1fs",
            KAFKA_VERSION,
            self.bootstrap_servers,
            self.start_seconds,
        )

    def _start_in_dir(self, java: str, classpath: str) -> None:
        attempts = 1 if self._fixed_port is not None else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if self._fixed_port is not None:
                self.port, self.controller_port = self._fixed_port, free_ports(1)[0]
                while self.controller_port == self.port:
                    self.controller_port = free_ports(1)[0]
            else:
                self.port, self.controller_port = free_ports(2)
            config = self._write_config()
            self._format_storage(java, classpath, config)
            self._proc = spawn(self._broker_command(java, classpath, config), self.console_log)
            try:
                self._wait_ready()
                return
            except KafkaStartFailed as err:
                bind_failed = "Address already in use" in (
                    tail(self.console_log, 200) + tail(self.server_log, 200)
                )
                self._kill()
                if not (bind_failed and attempt < attempts):
                    raise
                log.warning(
                    "Kafka could not bind its ports, retrying: %s", str(err).splitlines()[0]
                )

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and remove a temporary data dir."""
        atexit.unregister(self.stop)
        self._kill()
        if self.data_dir is not None and self._persistent_dir is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: no clean shutdown, nothing removed.
        start() then recovers the same data (given data_dir) on the same port (given
        port), which is how tests restart a broker under running clients."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _kill(self) -> None:
        if self._proc is not None:
            # A broker shuts down cleanly in a few seconds; beyond that it is stuck.
            terminate(self._proc, grace=20.0)
            self._proc = None

    def create_topics(self, specs: list[tuple[str, int]], timeout: float = 30.0) -> None:
        """Create topics given as (name, partitions), replication factor 1, and wait until
        every partition has a leader. Topics that already exist are left as they are."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self._admin()
        try:
            # One request per topic: kafka-python raises on the first error in a batch,
            # so a topic that exists would hide the outcome for the rest.
            for name, partitions in specs:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(name, partitions, 1)])
            self._wait_for_leaders(admin, [name for name, _ in specs], timeout)
        finally:
            admin.close()

    def _require_dir(self) -> Path:
        if self.data_dir is None:
            raise RuntimeError("EmbeddedKafka has not been started")
        return self.data_dir

    def _write_config(self) -> Path:
        root = self._require_dir()
        (root / "logs").mkdir(exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(root / "data"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            # One broker: 50 __consumer_offsets partitions only slow down the first group.
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            **self._extra_properties(),
        }
        config = root / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = root / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={self.server_log}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            # Startup and shutdown milestones, to tell a slow start from a stuck one.
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
            "log4j.logger.kafka.server.BrokerServer=INFO\n"
            "log4j.logger.kafka.server.ControllerServer=INFO\n"
        )
        return config

    def _extra_properties(self) -> dict[str, str]:
        """Broker properties over the defaults above, for a subclass (the tests' broker
        with TLS and SASL listeners); called once per start attempt, after the ports are
        chosen."""
        return {}

    def _format_options(self) -> list[str]:
        """Options of `kafka-storage format` a subclass adds (e.g. --add-scram)."""
        return []

    def _jvm_options(self) -> list[str]:
        root = self._require_dir()
        return [
            *JVM_HEAP,
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{root / 'log4j.properties'}",
            f"-Dkafka.logs.dir={root / 'logs'}",
        ]

    def _format_storage(self, java: str, classpath: str, config: Path) -> None:
        data = self._require_dir() / "data"
        if (data / "meta.properties").exists():
            return  # a persistent data dir from an earlier start keeps its cluster id
        argv = [
            java,
            # A short-lived tool: the C1 compiler alone starts it faster.
            "-XX:TieredStopAtLevel=1",
            *self._jvm_options(),
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            random_cluster_id(),
            "-c",
            str(config),
            *self._format_options(),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise KafkaStartFailed(
                f"formatting Kafka storage in {data} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def _broker_command(self, java: str, classpath: str, config: Path) -> list[str]:
        return [java, *self._jvm_options(), "-cp", classpath, "kafka.Kafka", str(config)]

    def _failure(self, why: str) -> KafkaStartFailed:
        logs = "\n".join(
            f"--- {p} (last lines) ---\n{t}"
            for p in (self.console_log, self.server_log)
            if (t := tail(p))
        )
        return KafkaStartFailed(f"Kafka broker {why}\n{logs or '(no log output)'}")

    def _wait_ready(self) -> None:
        """Until the broker answers a metadata request naming itself."""
        deadline = time.monotonic() + self.start_timeout
        assert self._proc is not None and self.port is not None
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._failure(f"exited with status {self._proc.returncode} while starting")
            # A bound port accepts connections before the broker serves requests, but until
            # it is bound there is no point in starting a client (which logs every refusal).
            if not port_open(self.port):
                time.sleep(0.1)
                continue
            try:
                admin = self._admin(request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    if admin.describe_cluster()["brokers"]:
                        return
                finally:
                    admin.close()
            except Exception as err:  # any client error: not ready yet
                last_error = err
            time.sleep(0.2)
        raise self._failure(
            f"was not ready within {self.start_timeout:.0f}s (last client error: {last_error!r})"
        )

    def _admin(self, request_timeout_ms: int = 30000) -> Any:
        from kafka import KafkaAdminClient

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id="flowmill-embedded-kafka",
            request_timeout_ms=request_timeout_ms,
        )

    def _wait_for_leaders(self, admin: Any, topics: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            described = admin.describe_topics(topics)
            pending = [
                t["topic"]
                for t in described
                if t["error_code"] != 0
                or not t["partitions"]
                or any(p["leader"] < 0 for p in t["partitions"])
            ]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka topics without partition leaders: {pending}")
            time.sleep(0.1)
