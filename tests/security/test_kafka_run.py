"""`flowmill run` against an external secured Kafka: the same FLOWMILL_KAFKA_* variables a
pod gets make its topic creation and its worker processes use SASL_SSL (SCRAM-SHA-512)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from flowmill.local.redis import EmbeddedRedis
from flowmill.run.local_run import LocalRun, RunFailed
from tests.harness.secure_kafka import SecureKafka
from tests.harness.waiting import unique
from tests.workers.harness import consume_all


def _manifest(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    document = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "topics": [{"name": f"{name}-in", "partitions": 2}, {"name": f"{name}-out"}],
            "sources": [
                {
                    "name": "gen",
                    "to": f"{name}-in",
                    "generator": {
                        "fields": {"n": {"type": "sequence"}},
                        "count": 120,
                        "rate": 2000,
                    },
                }
            ],
            "steps": [
                {
                    "name": "odd",
                    "from": f"{name}-in",
                    "filter": "n % 2 == 1",
                    "sink": {"kafka": {"topic": f"{name}-out"}},
                }
            ],
        },
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_run_on_an_external_sasl_ssl_kafka(
    secure_kafka: SecureKafka,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique("secrun")
    for variable, value in secure_kafka.sasl_ssl().env().items():
        monkeypatch.setenv(variable, value)
    run = LocalRun(
        _manifest(tmp_path, name),
        bootstrap_servers=secure_kafka.address("SASL_SSL"),
        redis_url=redis_server.url,
        with_api=False,
        data_dir=tmp_path / "run",
    )
    with run:
        # Ready means each worker passed the security check and joined: a refusal or a
        # slow start is named here rather than as a short count below.
        run.wait_ready(timeout=120)
        got = asyncio.run(
            consume_all(secure_kafka.bootstrap_servers, f"{name}-out", 60, timeout=60)
        )
    assert sorted(json.loads(r.value)["n"] for r in got) == list(range(1, 120, 2))


def test_run_names_a_refused_password(
    secure_kafka: SecureKafka,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique("secrun")
    for variable, value in secure_kafka.sasl_ssl(password="wrong-one").env().items():
        monkeypatch.setenv(variable, value)
    run = LocalRun(
        _manifest(tmp_path, name),
        bootstrap_servers=secure_kafka.address("SASL_SSL"),
        redis_url=redis_server.url,
        with_api=False,
        data_dir=tmp_path / "run",
    )
    with pytest.raises(RunFailed) as info:
        run.start()
    assert "authentication failed" in str(info.value) and "as alice" in str(info.value)
    assert "wrong-one" not in str(info.value)
