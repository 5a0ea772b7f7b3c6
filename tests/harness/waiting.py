"""Waiting for a condition and naming things uniquely: what every suite needs, because the
session's broker, Redis and control plane outlive each test and change asynchronously."""

from __future__ import annotations

import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from kubernetes.client.rest import ApiException

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.1
) -> T:
    """Call probe() until it returns something truthy, and return that; raise TimeoutError
    naming `what` (and the last value) after `timeout` seconds. An object the apiserver does
    not have yet (a 404) counts as not yet, since most waits are for one to appear."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = probe()
        except ApiException as err:
            if err.status != 404:
                raise
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r:.200})"
            )
        time.sleep(interval)


def unique(prefix: str) -> str:
    """A fresh name (topic, Pipeline, namespace), so tests sharing a server never collide."""
    return f"{prefix}-{secrets.token_hex(3)}"


def http_ok(url: str) -> bool:
    """Whether a health endpoint answers 200 now (any error counts as not yet)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def https_ok(url: str) -> bool:
    """http_ok for a component serving TLS with the run's own self-signed certificate."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=insecure) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False
