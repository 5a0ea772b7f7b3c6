"""How the API is run: security, limits and live-update tuning.

Everything is off by default so `flowmill run` on a laptop needs no configuration. In a
cluster the operator fills the environment (API keys from a Secret, CORS origins and the
rate limit from the Pipeline's `spec.api`), which is why settings come from the
environment first and flags override them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from flowmill.settings import FlowmillSettings, split_list
from flowmill.spec import ENV_API_KEYS_DIR, Pipeline
from flowmill.spec.launch import ENV_API_PROMETHEUS_URL, ENV_API_RUN_STATUS

ENV_API_KEYS = "FLOWMILL_API_KEYS"
"""Comma-separated accepted API keys."""


class ApiSettings(FlowmillSettings):
    """Tunables of one API process; the defaults suit a local run. Each is read from
    FLOWMILL_API_<NAME> (e.g. FLOWMILL_API_RATE_LIMIT, FLOWMILL_API_CORS_ORIGINS), the keys
    from FLOWMILL_API_KEYS and the files in FLOWMILL_API_KEYS_DIR."""

    model_config = FlowmillSettings.model_config | SettingsConfigDict(env_prefix="FLOWMILL_API_")

    api_keys_dir: Path | None = Field(default=None, validation_alias=ENV_API_KEYS_DIR)
    """A directory whose files each hold one accepted key (a Secret mounted as a volume)."""
    api_keys: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), validation_alias=ENV_API_KEYS, validate_default=True
    )
    """Accepted keys (X-API-Key header, `Authorization: Bearer`, or `api_key` query for
    browsers' EventSource), with those of api_keys_dir. Empty: no key needed."""
    rate_limit: float | None = Field(default=None, gt=0)
    """Requests per second per client (API key, else address); None: unlimited."""
    rate_burst: int | None = Field(default=None, ge=1)
    """Requests a client may send at once before the rate applies; default: one second's
    worth."""
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Origins allowed by CORS (the variable is comma-separated); empty: no CORS headers
    (same-origin only)."""
    fast_path: bool = True
    """Answer the hottest key lookups in front of FastAPI (flowmill_api.fastpath); off:
    every request goes through FastAPI's routes (same answers, slower)."""
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

    run_status_file: Path | None = Field(default=None, validation_alias=ENV_API_RUN_STATUS)
    """The status a local run's supervisor writes (`flowmill run` sets it): the health
    view's source of each part's state, rates, lag and restarts."""
    prometheus_url: str | None = Field(
        default=None, validation_alias=ENV_API_PROMETHEUS_URL, pattern=r"^https?://"
    )
    """A Prometheus scraping the Pipeline's pods: the health view's source on a cluster."""
    prometheus_rate_window: str = Field(default="1m", pattern=r"^[1-9][0-9]*(ms|s|m|h)$")
    """The range of the health view's rate() queries; at least four of that Prometheus's
    scrape intervals (1m suits the usual 15 s)."""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _all_keys(cls, value: object, info: ValidationInfo) -> object:
        listed = split_list(value)
        if not isinstance(listed, Iterable):
            return listed  # not a list of keys: validation names the problem
        keys = set(listed)
        directory = info.data.get("api_keys_dir")
        if directory is not None:
            keys |= set(_keys_from_dir(directory))
        return frozenset(keys)

    @classmethod
    def for_pipelines(cls, pipelines: Iterable[Pipeline], **flags: Any) -> ApiSettings:
        """Settings from the Pipelines' `spec.api`, then the environment, then the flags
        that were given (not None)."""
        settings = cls.from_env(**flags)
        pipelines = list(pipelines)
        from_spec: dict[str, Any] = {}
        limits = [p.spec.api.rate_limit for p in pipelines if p.spec.api.rate_limit]
        if limits:
            # One process serves every Pipeline given, so the strictest limit applies.
            from_spec["rate_limit"] = float(min(limits))
        origins = [o for p in pipelines for o in p.spec.api.cors_origins]
        if origins:
            from_spec["cors_origins"] = tuple(dict.fromkeys(origins))
        unset = {k: v for k, v in from_spec.items() if k not in settings.model_fields_set}
        return settings.model_copy(update=unset)


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
