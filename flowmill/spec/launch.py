"""How the processes of a Pipeline are started: their command lines, the environment
variables that tell them where Kafka and Redis are, and their ports.

A Deployment (rendered by the operator) and a child of `flowmill run` start the same
`flowmill worker` / `flowmill api` commands; both build them here, and the `flowmill`
parsers (flowmill_workers.command, flowmill_api.command) read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

WorkerKind = Literal["source", "step"]

ENV_BOOTSTRAP_SERVERS = "FLOWMILL_BOOTSTRAP_SERVERS"
"""Kafka bootstrap servers of the workers and the API."""
ENV_REDIS_URL = "FLOWMILL_REDIS_URL"
"""Redis of the serving tables (a Secret's value in a cluster)."""
ENV_API_KEYS_DIR = "FLOWMILL_API_KEYS_DIR"
"""A directory whose files each hold one accepted API key (a Secret mounted as a volume)."""
ENV_API_RUN_STATUS = "FLOWMILL_API_RUN_STATUS_FILE"
"""The JSON status a local run's supervisor writes every second (each child's state,
restarts, rates, lag): `flowmill run` sets it for its API, whose health view reads it."""
ENV_API_PROMETHEUS_URL = "FLOWMILL_API_PROMETHEUS_URL"
"""A Prometheus scraping the Pipeline's pods: on a cluster the API's health view asks it
for the workers' rates, lag and dead letters."""
ENV_REDIS_PASSWORD = "FLOWMILL_REDIS_PASSWORD"
"""Password for the Redis URL (spec.redis.passwordSecretRef): always a Secret's value in a
cluster, so the URL itself never holds it (in a ConfigMap, a Deployment or argv)."""
ENV_REDIS_CA_FILE = "FLOWMILL_REDIS_CA_FILE"
"""PEM file of the CA(s) that signed a rediss:// server's certificate; unset: the system's."""
ENV_REDIS_CERT_FILE = "FLOWMILL_REDIS_CERT_FILE"
"""PEM client certificate for Redis, for mutual TLS."""
ENV_REDIS_KEY_FILE = "FLOWMILL_REDIS_KEY_FILE"
"""PEM private key of that certificate."""
REDIS_TIMEOUT_S = 5.0
"""How long a worker waits for Redis to answer one command (or accept a connection):
past it, a write fails with TimeoutError and is retried like a refused one, the step
unready meanwhile; without it a paused Redis (SIGSTOP, a frozen VM) kept the write
waiting and the worker ready. A batch's script runs in milliseconds, so the bound is
far above any honest answer."""
ENV_REDIS_TIMEOUT = "FLOWMILL_REDIS_TIMEOUT_SECONDS"
"""Overrides REDIS_TIMEOUT_S for a worker (`flowmill worker --redis-timeout` over it)."""
REDIS_TLS_MOUNT = "/var/run/flowmill/redis-tls"
"""Where a pod mounts the Redis CA, certificate and key (spec.redis.tls)."""
REDIS_TLS_FILES = {
    ENV_REDIS_CA_FILE: "ca.crt",
    ENV_REDIS_CERT_FILE: "tls.crt",
    ENV_REDIS_KEY_FILE: "tls.key",
}
"""The file each Redis TLS variable points at inside REDIS_TLS_MOUNT."""
REDIS_SECURITY_ENV = (ENV_REDIS_PASSWORD, *REDIS_TLS_FILES)
"""Every variable of the Redis client credentials (flowmill.connections reads them)."""
ENV_KAFKA_SECURITY_PROTOCOL = "FLOWMILL_KAFKA_SECURITY_PROTOCOL"
"""PLAINTEXT (unset), SSL, SASL_PLAINTEXT or SASL_SSL: how every Kafka client connects."""
ENV_KAFKA_SASL_MECHANISM = "FLOWMILL_KAFKA_SASL_MECHANISM"
"""PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
ENV_KAFKA_SASL_USERNAME = "FLOWMILL_KAFKA_SASL_USERNAME"
"""The SASL user (a literal, or a Secret's value)."""
ENV_KAFKA_SASL_PASSWORD = "FLOWMILL_KAFKA_SASL_PASSWORD"
"""The SASL password: always a Secret's value in a cluster, never in argv or a ConfigMap."""
ENV_KAFKA_CA_FILE = "FLOWMILL_KAFKA_CA_FILE"
"""PEM file of the CA(s) that signed the brokers' certificates; unset: the system's."""
ENV_KAFKA_CERT_FILE = "FLOWMILL_KAFKA_CERT_FILE"
"""PEM client certificate, for mutual TLS."""
ENV_KAFKA_KEY_FILE = "FLOWMILL_KAFKA_KEY_FILE"
"""PEM private key of that certificate."""
KAFKA_SECURITY_ENV = (
    ENV_KAFKA_SECURITY_PROTOCOL,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SASL_USERNAME,
    ENV_KAFKA_SASL_PASSWORD,
    ENV_KAFKA_CA_FILE,
    ENV_KAFKA_CERT_FILE,
    ENV_KAFKA_KEY_FILE,
)
"""Every variable of the Kafka client security (flowmill/kafka_security.py reads them)."""
KAFKA_TLS_MOUNT = "/var/run/flowmill/kafka-tls"
"""Where a pod mounts the Kafka CA, certificate and key (one read-only Secret volume)."""
KAFKA_TLS_FILES = {
    ENV_KAFKA_CA_FILE: "ca.crt",
    ENV_KAFKA_CERT_FILE: "user.crt",
    ENV_KAFKA_KEY_FILE: "user.key",
}
"""The file each TLS variable points at inside KAFKA_TLS_MOUNT (Strimzi's key names)."""
RESERVED_ENV = (
    ENV_BOOTSTRAP_SERVERS,
    ENV_REDIS_URL,
    ENV_API_KEYS_DIR,
    *KAFKA_SECURITY_ENV,
    *REDIS_SECURITY_ENV,
)
"""Variables flowmill sets in every pod it renders; a pod template may not set them."""

WORKING_DIR = "/home/flowmill"
"""The working directory of the flowmill image (its WORKDIR): relative paths in a spec
(a fileReplay file, a parquet lake) are relative to it in a pod."""

WORKER_METRICS_PORT = 9400
"""A worker's /metrics, /healthz and /readyz."""
API_PORT = 8000
"""The serving API."""
POD_LISTEN_ADDRESS = "0.0.0.0"
"""Where servers in a pod listen: the kubelet's probes and Services reach the pod's IP."""

STOP_GRACE_S = 20
"""Seconds a worker or the API has, after SIGTERM, to finish its batch (or requests),
flush and close; then it exits anyway (`--stop-grace`), saying what was not durable."""
EXIT_UNFLUSHED = 75
"""A worker's grace ran out with work not yet durable (it is read again on restart)."""
EXIT_UNCLOSED = 76
"""The grace ran out after everything was durable, while closing the clients (a consumer
that did not leave its group is dropped by the coordinator after its session timeout;
the API: its own shutdown did not end in time)."""
EXIT_STALLED = 77
"""A Faust step held input it had not processed and neither consumed nor committed any of
it for its faust.stallTimeout (faust_step/stall.py): it exits so that it is restarted."""
STOP_GRACE_SLACK_S = 10
"""What the kubelet allows beyond the grace: the process logging why and exiting, and
Python's own start-up share of a slow node."""


def termination_grace_period(stop_grace_s: float) -> int:
    """A pod's terminationGracePeriodSeconds for a process given `stop_grace_s`: above
    the grace, so it always ends by its own deadline (and says why) before the kubelet's
    SIGKILL."""
    return math.ceil(stop_grace_s) + STOP_GRACE_SLACK_S


TERMINATION_GRACE_PERIOD_S = termination_grace_period(STOP_GRACE_S)
"""The workers' pods' terminationGracePeriodSeconds."""


FAUST_CODE_MOUNT = "/opt/flowmill/faust-code"
"""Where a Faust step's pod mounts its code ConfigMap (faust.code.configMap)."""


def worker_args(
    pipeline_file: str,
    kind: WorkerKind,
    name: str,
    *,
    bootstrap_servers: str | None = None,
    metrics_port: int | None = None,
    code_path: str | None = None,
) -> list[str]:
    """Arguments of `flowmill` that run one source or step; what is left out comes from
    the environment or the defaults. The Redis URL is never an argument (argv is public
    in `ps`): it comes from connection_env's FLOWMILL_REDIS_URL. `code_path`: a
    directory put first on a Faust step's import path (its ConfigMap's mount, or
    faust.code.path in a local run)."""
    args = ["worker", "--pipeline", pipeline_file, f"--{kind}", name]
    if code_path is not None:
        args += ["--code-path", code_path]
    if bootstrap_servers is not None:
        args += ["--bootstrap-servers", bootstrap_servers]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    return args


API_HEADER_TIMEOUT_S = 10.0
"""The API closes a connection whose request headers are not complete this long after it
opened (or after its previous response): slow and silent clients (`--header-timeout`)."""
API_MAX_CONNECTIONS = 2_000
"""Open connections per API process; beyond, a newcomer gets 503 (`--max-connections`)."""


def api_args(
    pipeline_file: str,
    *,
    port: int = API_PORT,
    host: str | None = None,
    trusted_proxies: Sequence[str] = (),
    header_timeout_s: float | None = None,
    max_connections: int | None = None,
    stop_grace_s: float | None = None,
) -> list[str]:
    """Arguments of `flowmill` that serve a Pipeline's API; `host` unset: the command's
    default, loopback (right for `flowmill run`, not for a pod). `trusted_proxies`:
    spec.api.trustedProxies; the limits left unset are the command's defaults above."""
    args = ["api", "--pipeline", pipeline_file, "--port", str(port)]
    if host is not None:
        args += ["--host", host]
    if trusted_proxies:
        args += ["--trusted-proxies", ",".join(trusted_proxies)]
    if header_timeout_s is not None:
        args += ["--header-timeout", _number(header_timeout_s)]
    if max_connections is not None:
        args += ["--max-connections", str(max_connections)]
    if stop_grace_s is not None:
        args += ["--stop-grace", _number(stop_grace_s)]
    return args


def _number(value: float) -> str:
    """10.0 as `10`, 2.5 as `2.5`: argv reads as a person would write it."""
    return str(int(value)) if float(value).is_integer() else str(value)


def http_header_env(source: str, header: str) -> str:
    """The variable holding the value of an httpPoll source's header from a Secret
    (httpPoll.headersFrom), e.g. FLOWMILL_HEADER_FEED_AUTHORIZATION: a Deployment sets it
    from the Secret, a `flowmill run` user exports it."""
    return "FLOWMILL_HEADER_" + "_".join(_env_token(part) for part in (source, header))


def _env_token(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.upper())


def connection_env(redis_url: str) -> dict[str, str]:
    """The variables that tell a child of `flowmill run` where Redis is: its URL may carry
    a password, and a process's environment, unlike its argv, is readable only by its own
    user."""
    return {ENV_REDIS_URL: redis_url}
