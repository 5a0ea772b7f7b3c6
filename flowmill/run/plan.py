"""What a local run starts: one child process per source, per step and for the API, each
running the same `flowmill worker` / `flowmill api` command a Deployment runs."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flowmill.spec import ENV_BOOTSTRAP_SERVERS, Pipeline, StepSpec, api_args, worker_args
from flowmill.spec.launch import connection_env

ChildKind = Literal["source", "step", "api"]


@dataclass(frozen=True)
class Connections:
    """Where the children find Kafka and Redis."""

    bootstrap_servers: str
    redis_url: str
    """May carry a password: children get it in their environment (env()), never in argv."""


@dataclass(frozen=True)
class ChildSpec:
    """One child process. `port` serves /metrics and /readyz (the API's own port for the
    API); it is chosen by the run, not by the child, so the status table knows where to
    look without asking."""

    kind: ChildKind
    name: str
    """The source's or step's name; `api` for the API."""
    code_path: str | None = None
    """A Faust step's faust.code.path, as written (relative to the manifest file)."""
    trusted_proxies: tuple[str, ...] = ()
    """The API's spec.api.trustedProxies."""

    @property
    def label(self) -> str:
        return self.name if self.kind == "api" else f"{self.kind}/{self.name}"

    @property
    def log_name(self) -> str:
        return "api.log" if self.kind == "api" else f"{self.kind}-{self.name}.log"

    def argv(self, manifest: Path, conn: Connections, port: int) -> list[str]:
        """The command line, with the interpreter running flowmill itself (so a venv that
        is not on PATH still works)."""
        base = [sys.executable, "-m", "flowmill.cli"]
        if self.kind == "api":
            return [
                *base,
                *api_args(str(manifest), port=port, trusted_proxies=self.trusted_proxies),
            ]
        return [
            *base,
            *worker_args(
                str(manifest),
                self.kind,
                self.name,
                bootstrap_servers=conn.bootstrap_servers,
                metrics_port=port,
                code_path=str(manifest.parent / self.code_path) if self.code_path else None,
            ),
        ]

    def env(self, conn: Connections) -> dict[str, str]:
        """Variables set for the child over the run's own environment. The API reads
        Kafka too: its health view counts each topic and reads the dead letters."""
        env = connection_env(conn.redis_url)
        if self.kind == "api":
            env[ENV_BOOTSTRAP_SERVERS] = conn.bootstrap_servers
        return env


def children_of(pipeline: Pipeline, with_api: bool = True) -> list[ChildSpec]:
    """Sources first, then steps, then the API: the order of the status table."""
    children = [ChildSpec("source", s.name) for s in pipeline.spec.sources]
    children += [ChildSpec("step", s.name, _code_path(s)) for s in pipeline.spec.steps]
    if with_api and pipeline.spec.api.enabled:
        proxies = tuple(pipeline.spec.api.trusted_proxies)
        children.append(ChildSpec("api", "api", trusted_proxies=proxies))
    return children


def _code_path(step: StepSpec) -> str | None:
    code = step.faust.code if step.faust else None
    return code.path if code else None
