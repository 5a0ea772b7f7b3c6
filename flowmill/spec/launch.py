"""How the processes of a Pipeline are started: their command lines, the environment
variables that tell them where Kafka and Redis are, and their ports.

A Deployment (rendered by the operator) and a child of `flowmill run` start the same
`flowmill worker` / `flowmill api` commands; both build them here, and the `flowmill`
parsers (flowmill_workers.command, flowmill_api.command) read them.
"""

from __future__ import annotations

from typing import Literal

WorkerKind = Literal["source", "step"]

ENV_BOOTSTRAP_SERVERS = "FLOWMILL_BOOTSTRAP_SERVERS"
"""Kafka bootstrap servers of the workers and the API."""
ENV_REDIS_URL = "FLOWMILL_REDIS_URL"
"""Redis of the serving tables (a Secret's value in a cluster)."""
ENV_API_KEYS_DIR = "FLOWMILL_API_KEYS_DIR"
"""A directory whose files each hold one accepted API key (a Secret mounted as a volume)."""
RESERVED_ENV = (ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, ENV_API_KEYS_DIR)
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


def worker_args(
    pipeline_file: str,
    kind: WorkerKind,
    name: str,
    *,
    bootstrap_servers: str | None = None,
    redis_url: str | None = None,
    metrics_port: int | None = None,
) -> list[str]:
    """Arguments of `flowmill` that run one source or step; what is left out comes from
    the environment or the defaults."""
    args = ["worker", "--pipeline", pipeline_file, f"--{kind}", name]
    if bootstrap_servers is not None:
        args += ["--bootstrap-servers", bootstrap_servers]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    return args


def api_args(
    pipeline_file: str,
    *,
    port: int = API_PORT,
    redis_url: str | None = None,
    host: str | None = None,
) -> list[str]:
    """Arguments of `flowmill` that serve a Pipeline's API; `host` unset: the command's
    default, loopback (right for `flowmill run`, not for a pod)."""
    args = ["api", "--pipeline", pipeline_file, "--port", str(port)]
    if host is not None:
        args += ["--host", host]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    return args
