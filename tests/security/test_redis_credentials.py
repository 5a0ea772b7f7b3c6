"""Redis AUTH (an ACL user, requirepass) and TLS end to end: `flowmill run` with a worker
writing a table and the API serving it, against real redis-servers that refuse anyone
without the credentials; and no secret in the children's argv, their logs (0600), the
run's events or its status table."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rich.console import Console

from flowmill.local.kafka import EmbeddedKafka
from flowmill.run import LocalRun
from flowmill.run.status_table import plain, render
from flowmill.spec import ENV_REDIS_URL
from flowmill.spec.launch import ENV_REDIS_CA_FILE, ENV_REDIS_PASSWORD
from tests.harness.waiting import unique, wait_for
from tests.security.redis_servers import (
    APP_PASSWORD,
    APP_USER,
    DEFAULT_PASSWORD,
    SecuredRedis,
    secured_redis,
)

EVENTS = 40
TABLE = "things"


def manifest(folder: Path) -> Path:
    """A generator of EVENTS ids 0..EVENTS-1, a latest table keyed by id, the API."""
    name = unique("sec")
    topic = f"{name}-in"
    doc: dict[str, Any] = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "topics": [{"name": topic, "partitions": 1}],
            "sources": [
                {
                    "name": "gen",
                    "to": topic,
                    "key": "id",
                    "generator": {
                        "rate": 500,
                        "count": EVENTS,
                        "fields": {"id": {"type": "sequence"}},
                    },
                }
            ],
            "steps": [
                {
                    "name": "latest",
                    "from": topic,
                    "keyBy": "id",
                    "latest": {},
                    "sink": {"redis": {"table": TABLE}},
                }
            ],
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def plain_redis(tmp_path: Path) -> Iterator[SecuredRedis]:
    with secured_redis(tmp_path / "redis", tls=False) as server:
        yield server


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[SecuredRedis]:
    with secured_redis(tmp_path / "redis-tls", tls=True) as server:
        yield server


def test_acl_user_with_password_from_the_environment(
    kafka_broker: EmbeddedKafka,
    plain_redis: SecuredRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a Deployment gets from spec.redis.url plus passwordSecretRef.
    monkeypatch.setenv(ENV_REDIS_URL, f"redis://{APP_USER}@127.0.0.1:{plain_redis.port}/0")
    monkeypatch.setenv(ENV_REDIS_PASSWORD, APP_PASSWORD)
    run_and_check(kafka_broker, plain_redis, tmp_path, [APP_PASSWORD], expect_user=APP_USER)


def test_tls_with_the_whole_url_from_the_environment(
    kafka_broker: EmbeddedKafka,
    tls_redis: SecuredRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a Deployment gets from spec.redis.secretRef plus tls.caSecretRef.
    assert tls_redis.tls is not None
    url = f"rediss://:{DEFAULT_PASSWORD}@127.0.0.1:{tls_redis.port}/0"
    monkeypatch.setenv(ENV_REDIS_URL, url)
    monkeypatch.setenv(ENV_REDIS_CA_FILE, str(tls_redis.tls.ca))
    run_and_check(kafka_broker, tls_redis, tmp_path, [DEFAULT_PASSWORD], expect_user="default")


def run_and_check(
    kafka: EmbeddedKafka,
    server: SecuredRedis,
    tmp_path: Path,
    secrets: list[str],
    *,
    expect_user: str,
) -> None:
    path = manifest(tmp_path)
    run = LocalRun(
        path, bootstrap_servers=kafka.bootstrap_servers, api_port=0, data_dir=tmp_path / "run"
    )
    with run:
        run.wait_ready(timeout=60)
        name = run.pipeline.name
        url = f"{run.api_url}/pipelines/{name}/tables/{TABLE}/entries"

        def served() -> dict[str, Any] | None:
            page = httpx.get(url, params={"limit": 1000}, timeout=5).json()
            return page if page.get("total") == EVENTS else None

        page = wait_for(served, 60, f"{EVENTS} entries served by the API")
        assert sorted(int(entry["key"]) for entry in page["entries"]) == list(range(EVENTS))
        # The worker and the API hold connections as the user the credentials name.
        with server.client(decode_responses=True) as admin:
            users = {c["user"] for c in admin.client_list()}
        assert expect_user in users, users
        assert_no_secret_shown(run, secrets)
    assert not run.child_pids()


def assert_no_secret_shown(run: LocalRun, secrets: list[str]) -> None:
    """The secrets are nowhere a person or another user of the machine reads."""
    pids = run.child_pids()
    assert len(pids) == 3  # source, step, API
    shown: dict[str, str] = {}
    for pid in pids:
        shown[f"/proc/{pid}/cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    for log in sorted(run.log_dir.iterdir()):
        shown[str(log)] = log.read_text()
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
    assert stat.S_IMODE(run.log_dir.stat().st_mode) == 0o700
    console = Console(record=True, width=200)
    console.print(render(run.status()))
    shown["status table"] = console.export_text()
    shown["status line"] = plain(run.status())
    shown["events"] = "\n".join(run.events)
    assert run.status().redis_url.startswith("redis")  # it is shown, redacted
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"{where} shows a secret"
