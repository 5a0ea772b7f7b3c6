"""Real infrastructure started on this machine: the embedded Kafka broker and Redis server
that `flowmill run` uses when none is given, and that the tests run against."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROVISION_HINT = "run `scripts/provision.sh` (or `make provision`) to install it"


class ComponentMissing(RuntimeError):
    """A provisioned component (Kafka, Redis, etcd, kube-apiserver, ...) is not installed."""

    def __init__(self, component: str, looked_in: str) -> None:
        super().__init__(f"{component} is not installed (looked in {looked_in}); {PROVISION_HINT}")
        self.component = component


def cache_dir() -> Path:
    """Where scripts/provision.sh puts components: $FLOWMILL_CACHE or ~/.cache/flowmill."""
    return Path(os.environ.get("FLOWMILL_CACHE", Path.home() / ".cache" / "flowmill"))


def find_binary(name: str) -> Path:
    """A provisioned binary: the cache's bin/ first, then PATH."""
    cached = cache_dir() / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ComponentMissing(name, f"{cached.parent} and PATH")
