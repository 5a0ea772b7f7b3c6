"""How the API is run: security, limits and live-update tuning.

Everything is off by default so `flowmill run` on a laptop needs no configuration. In a
cluster the operator fills the environment (API keys from a Secret, CORS origins and the
rate limit from the Pipeline's `spec.api`), which is why settings come from the
environment first and flags override them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from flowmill.spec import ENV_API_KEYS_DIR, Pipeline

ENV_API_KEYS = "FLOWMILL_API_KEYS"
"""Comma-separated accepted API keys."""
ENV_RATE_LIMIT = "FLOWMILL_API_RATE_LIMIT"
"""Requests per second allowed per client."""
ENV_CORS_ORIGINS = "FLOWMILL_API_CORS_ORIGINS"
"""Comma-separated origins allowed by CORS (`*` for any)."""


class ApiSettings(BaseModel):
    """Tunables of one API process; the defaults suit a local run."""

    model_config = ConfigDict(frozen=True)

    api_keys: frozenset[str] = frozenset()
    """Accepted keys (X-API-Key header, `Authorization: Bearer`, or `api_key` query for
    browsers' EventSource). Empty: no key needed."""
    rate_limit: float | None = Field(default=None, gt=0)
    """Requests per second per client (API key, else address); None: unlimited."""
    rate_burst: int | None = Field(default=None, ge=1)
    """Requests a client may send at once before the rate applies; default: one second's
    worth."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS; empty: no CORS headers (same-origin only)."""
    retry_after_seconds: int = Field(default=2, ge=1)
    """Retry-After of a 503 while Redis is unreachable."""
    redis_connections: int = Field(default=4, ge=1, le=64)
    """Connections in the read pool; each carries many requests at once (pipelined)."""
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    """Connect and read timeout per Redis call, so an unreachable Redis is a prompt 503
    rather than a hung request."""
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    """Idle time after which a live stream sends a keep-alive, so proxies keep it open."""
    live_queue_size: int = Field(default=1000, ge=1)
    """Updates buffered per live client; a client that falls further behind is resynced
    from Redis instead of stalling the others."""
    replay_margin_ms: int = Field(default=60_000, ge=0)
    """On reconnect, latest-state entries updated up to this long before the last seen
    event are re-sent (their update times are producer times, which precede delivery)."""

    @classmethod
    def from_env(
        cls,
        pipelines: Iterable[Pipeline] = (),
        environ: Mapping[str, str] | None = None,
        **overrides: object,
    ) -> ApiSettings:
        """Settings from the Pipelines' `spec.api`, then the environment, then `overrides`
        (flags); None overrides are ignored so unset flags keep the lower layers."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        pipelines = list(pipelines)
        limits = [p.spec.api.rate_limit for p in pipelines if p.spec.api.rate_limit]
        if limits:
            # One process serves every Pipeline given, so the strictest limit applies.
            values["rate_limit"] = float(min(limits))
        origins = [o for p in pipelines for o in p.spec.api.cors_origins]
        if origins:
            values["cors_origins"] = tuple(dict.fromkeys(origins))
        keys = set(_split(env.get(ENV_API_KEYS, "")))
        if env.get(ENV_API_KEYS_DIR):
            keys |= set(_keys_from_dir(Path(env[ENV_API_KEYS_DIR])))
        if keys:
            values["api_keys"] = frozenset(keys)
        if env.get(ENV_RATE_LIMIT):
            values["rate_limit"] = float(env[ENV_RATE_LIMIT])
        if env.get(ENV_CORS_ORIGINS):
            values["cors_origins"] = tuple(_split(env[ENV_CORS_ORIGINS]))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _keys_from_dir(directory: Path) -> list[str]:
    """Each regular file of a mounted Secret is one key (Kubernetes adds dot-files and
    symlinked `..data` entries, which are skipped)."""
    if not directory.is_dir():
        raise ValueError(f"{ENV_API_KEYS_DIR}={directory} is not a directory")
    keys = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        key = path.read_text().strip()
        if key:
            keys.append(key)
    return keys
