"""What a local run starts: one child process per source, per step and for the API, each
running the same `flowmill worker` / `flowmill api` command a Deployment runs."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flowmill.spec import Pipeline, api_args, worker_args

ChildKind = Literal["source", "step", "api"]


@dataclass(frozen=True)
class Connections:
    """Where the children find Kafka and Redis."""

    bootstrap_servers: str
    redis_url: str


@dataclass(frozen=True)
class ChildSpec:
    """One child process. `port` serves /metrics and /readyz (the API's own port for the
    API); it is chosen by the run, not by the child, so the status table knows where to
    look without asking."""

    kind: ChildKind
    name: str
    """The source's or step's name; `api` for the API."""

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
            return [*base, *api_args(str(manifest), port=port, redis_url=conn.redis_url)]
        return [
            *base,
            *worker_args(
                str(manifest),
                self.kind,
                self.name,
                bootstrap_servers=conn.bootstrap_servers,
                redis_url=conn.redis_url,
                metrics_port=port,
            ),
        ]


def children_of(pipeline: Pipeline, with_api: bool = True) -> list[ChildSpec]:
    """Sources first, then steps, then the API: the order of the status table."""
    children = [ChildSpec("source", s.name) for s in pipeline.spec.sources]
    children += [ChildSpec("step", s.name) for s in pipeline.spec.steps]
    if with_api and pipeline.spec.api.enabled:
        children.append(ChildSpec("api", "api"))
    return children
