"""A Faust step on the secured broker (tests/harness/secure_kafka.py): `flowmill worker`
reads FLOWMILL_KAFKA_* as a built-in step does and gives them to Faust as its
broker_credentials, so the example agent's flags are exact over SASL_SSL (SCRAM-SHA-512)
and over mutual TLS. Trips go in and flags come out through the plaintext listener: an
independent path. Without the credentials the agent cannot even join its group on these
listeners, and the renderer no longer refuses a Faust step with spec.kafka.security."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flowmill.kafka_security import KafkaClientSecurity
from flowmill.local.ports import free_port
from flowmill.manifest import parse_pipeline
from flowmill.spec.launch import ENV_KAFKA_SASL_PASSWORD, ENV_KAFKA_SECURITY_PROTOCOL
from flowmill_operator import naming
from flowmill_operator.render import render
from tests.examples.harness import read_topic
from tests.faust.harness import AGENT_CODE, expected_flags, faust_manifest, valid_trips
from tests.faust.test_faust_worker import _produce
from tests.harness.secure_kafka import SecureKafka
from tests.harness.waiting import wait_for
from tests.operator.fixtures import TEST_RENDER


def _worker(
    manifest: Path, address: str, security: KafkaClientSecurity, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMILL_KAFKA_")}
    return subprocess.Popen(
        [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(manifest),
         "--step", "rules", "--bootstrap-servers", address, "--metrics-port", str(port),
         "--code-path", str(AGENT_CODE)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**env, **security.env()},
    )  # fmt: skip


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"])
def test_faust_step_over_a_secured_listener_flags_exactly(
    protocol: str, secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    security = secure_kafka.sasl_ssl() if protocol == "SASL_SSL" else secure_kafka.mtls()
    manifest, doc = faust_manifest(tmp_path, secure_kafka)
    source, sink = (t["name"] for t in doc["spec"]["topics"])
    trips = valid_trips()  # the example's 222 valid trips: both rules fire
    expected = expected_flags(trips)
    assert {rule for _, _, rule in expected} == {"burst", "impossible_speed"}, expected
    port = free_port()
    log = tmp_path / "worker.log"
    proc = _worker(manifest, secure_kafka.address(protocol), security, port, log)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            got = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2, trust_env=False)
        except httpx.TransportError:
            return False
        return got.status_code == 200

    try:
        wait_for(ready, 60, f"the Faust worker ready over {protocol}", interval=0.3)
        asyncio.run(_produce(secure_kafka.bootstrap_servers, source, trips))

        def flags() -> list[tuple[str, str, str]] | None:
            assert proc.poll() is None, log.read_text()[-3000:]
            got = [r["event"] for r in read_topic(secure_kafka.bootstrap_servers, sink)]
            found = sorted((f["rider_id"], f["trip_id"], f["rule"]) for f in got)
            return found if len(found) >= len(expected) else None

        assert wait_for(flags, 60, "every flag") == sorted(expected)
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text[-3000:]
    if security.password is not None:
        assert security.password.get_secret_value() not in text


def test_a_faust_step_with_kafka_security_renders_with_the_credentials() -> None:
    doc = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "fsec", "namespace": "default"},
        "spec": {
            "kafka": {
                "bootstrapServers": "kafka:9093",
                "security": {
                    "protocol": "SASL_SSL",
                    "sasl": {
                        "mechanism": "SCRAM-SHA-512",
                        "username": "app",
                        "passwordSecretRef": {"name": "app-kafka", "key": "password"},
                    },
                },
            },
            "topics": [{"name": "trips", "partitions": 3}, {"name": "flags", "partitions": 3}],
            "steps": [
                {
                    "name": "rules",
                    "from": "trips",
                    "faust": {
                        "app": "fraud_rules:app",
                        "agent": "detect",
                        "outputs": {"fraud-flags": "flags"},
                        "tables": ["rider-trips"],
                        "code": {"configMap": "fraud-code"},
                    },
                }
            ],
        },
    }
    out = render(parse_pipeline(doc), TEST_RENDER)
    (step,) = [
        m
        for m in out.manifests
        if m["kind"] == "Deployment"
        and m["metadata"]["name"] == naming.step_deployment("fsec", "rules")
    ]
    env = {e["name"]: e for e in step["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[ENV_KAFKA_SECURITY_PROTOCOL]["value"] == "SASL_SSL"
    assert env[ENV_KAFKA_SASL_PASSWORD]["valueFrom"]["secretKeyRef"] == {
        "name": "app-kafka",
        "key": "password",
    }
