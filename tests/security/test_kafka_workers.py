"""Workers against a real broker's secured listeners (tests/harness/secure_kafka.py): a step
and a source over SASL_SSL (SCRAM-SHA-512) give exact results, mutual TLS and SASL PLAIN
work too, and a wrong password or an untrusted CA leaves `flowmill worker` running,
unready, with /readyz and its log naming the refusal."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from flowmill.kafka_security import KafkaClientSecurity, refusal
from flowmill.local.ports import free_port
from flowmill.spec import Pipeline
from flowmill.spec.launch import worker_args
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.secure_kafka import SecureKafka
from tests.harness.waiting import unique, wait_for
from tests.workers.harness import consume_all, counter_value, create_topics, pipeline, produce
from tests.workers.test_sources_support import running, source_pipeline


def _copy_pipeline(name: str) -> tuple[str, str, Pipeline]:
    src, out = f"{name}-in", f"{name}-out"
    p = pipeline(
        name,
        [{"name": src, "partitions": 2}, {"name": out, "partitions": 2}],
        [{"name": "copy", "from": src, "filter": "n % 3 != 0", "sink": {"kafka": {"topic": out}}}],
    )
    return src, out, p


async def _run_copy(kafka: SecureKafka, address: str, security: KafkaClientSecurity) -> None:
    name = unique("sec")
    src, out, p = _copy_pipeline(name)
    create_topics(kafka, p)
    events = [{"n": i} for i in range(200)]
    # Fed and read back through the plaintext listener: an independent path.
    await produce(kafka.bootstrap_servers, src, events)
    runner = StepRunner(p, "copy", WorkerConfig(address, security=security))
    await runner.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        expected = sorted(e["n"] for e in events if e["n"] % 3 != 0)
        got = await consume_all(kafka.bootstrap_servers, out, len(expected))
        assert sorted(json.loads(r.value)["n"] for r in got) == expected
        assert counter_value(runner, "events_in") == len(events)
    finally:
        stop.set()
        await task
        await runner.stop()


async def test_step_over_sasl_ssl_scram_is_exact(secure_kafka: SecureKafka) -> None:
    await _run_copy(secure_kafka, secure_kafka.address("SASL_SSL"), secure_kafka.sasl_ssl())


async def test_step_over_mutual_tls_and_sasl_plain(secure_kafka: SecureKafka) -> None:
    await _run_copy(secure_kafka, secure_kafka.address("SSL"), secure_kafka.mtls())
    await _run_copy(secure_kafka, secure_kafka.address("SASL_PLAINTEXT"), secure_kafka.sasl_plain())


async def test_source_over_sasl_ssl_writes_each_event_once(secure_kafka: SecureKafka) -> None:
    name = unique("secsrc")
    topic = f"{name}-out"
    secure_kafka.create_topics([(topic, 2)])
    p = source_pipeline(
        name,
        [(topic, 2)],
        [
            {
                "name": "gen",
                "to": topic,
                "generator": {"fields": {"seq": {"type": "sequence"}}, "count": 150, "rate": 5000},
            }
        ],
    )
    address = secure_kafka.address("SASL_SSL")
    async with running(p, "gen", address, security=secure_kafka.sasl_ssl()) as src:
        await src.until(lambda: src.runner.finished.is_set())
    got = await consume_all(secure_kafka.bootstrap_servers, topic, 150)
    assert sorted(json.loads(r.value)["seq"] for r in got) == list(range(150))


async def test_refusals_name_their_cause(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    address = secure_kafka.address("SASL_SSL")
    assert await refusal(address, secure_kafka.sasl_ssl()) is None
    wrong = await refusal(address, secure_kafka.sasl_ssl(password="not-the-password"))
    assert wrong is not None and "authentication failed" in wrong and "as alice" in wrong
    assert "not-the-password" not in wrong
    untrusted = secure_kafka.sasl_ssl().model_copy(
        update={"ca_file": str(secure_kafka.pki.other_ca_cert)}
    )
    message = await refusal(address, untrusted)
    assert message is not None and "CERTIFICATE_VERIFY_FAILED" in message
    no_cert = KafkaClientSecurity(protocol="SSL", ca_file=str(secure_kafka.pki.ca_cert))
    message = await refusal(secure_kafka.address("SSL"), no_cert)
    assert message is not None and "client certificate" in message


def test_wrong_password_keeps_the_worker_unready_and_says_why(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    name = unique("secbad")
    _, _, p = _copy_pipeline(name)
    create_topics(secure_kafka, p)
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump(p.to_manifest()))
    port = free_port()
    wrong = "wrong-" + secure_kafka.passwords["alice"][:4]
    env = {
        **os.environ,
        **secure_kafka.sasl_ssl(password=wrong).env(),
    }
    log = tmp_path / "worker.log"
    argv = worker_args(
        str(manifest),
        "step",
        "copy",
        bootstrap_servers=secure_kafka.address("SASL_SSL"),
        metrics_port=port,
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowmill.cli", *argv], env=env, stdout=out, stderr=out
        )
    try:

        def readyz() -> dict[str, object] | None:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.HTTPError:
                return None
            body: dict[str, object] = resp.json()
            return body if resp.status_code == 503 and "refused" in str(body["detail"]) else None

        body = wait_for(readyz, 60, "the worker's /readyz naming the refusal")
        assert "authentication failed" in str(body["detail"])
        assert "SCRAM-SHA-512 as alice" in str(body["detail"])
        assert proc.poll() is None, "the worker exited instead of waiting unready"

        def logged() -> str | None:
            text = log.read_text()
            return text if "authentication failed" in text else None

        text = wait_for(logged, 10, "the refusal in the worker's log")
        assert "ERROR" in text
        assert wrong not in text, "the password reached the log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
