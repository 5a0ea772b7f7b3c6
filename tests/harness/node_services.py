"""The Kafka broker and Redis server a node's pods use: the embedded ones of flowmill.local,
reachable at the node's address as well as on loopback.

Pods cannot reach the node's loopback, so both listen on every address of the node's network
namespace (loopback, the node address, the pod bridge) and Kafka advertises the node address,
which the test process, living in the same namespace, reaches too. Nothing outside the
namespace can connect: it has no link to the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK
from flowmill.local.redis import EmbeddedRedis

ALL_ADDRESSES = "0.0.0.0"


class NodeKafka(EmbeddedKafka):
    """An EmbeddedKafka whose clients, pods included, bootstrap from host:port."""

    def __init__(self, host: str, data_dir: str | os.PathLike[str]) -> None:
        super().__init__(data_dir=data_dir)
        self.host = host

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("NodeKafka has not been started")
        return f"{self.host}:{self.port}"

    def _write_config(self) -> Path:
        config = super()._write_config()
        props = dict(line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)
        props["listeners"] = (
            f"PLAINTEXT://{ALL_ADDRESSES}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}"
        )
        props["advertised.listeners"] = f"PLAINTEXT://{self.bootstrap_servers}"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return config


class NodeRedis(EmbeddedRedis):
    """An EmbeddedRedis that also serves on host."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        super().start()
        # Started on loopback by the base class; bind (Redis >= 7) and protected mode are
        # runtime settings, and without a password protected mode refuses non-local clients.
        with redis.Redis(host=LOOPBACK, port=self.port) as client:
            client.config_set("bind", f"{LOOPBACK} {self.host}")
            client.config_set("protected-mode", "no")
