"""The operator side of Kafka security: its topic admin creates topics over SASL_SSL on the
real secured broker (and names a refused login), the renderer gives workers the
credentials only as secretKeyRefs and a read-only TLS volume (also for a Strimzi
KafkaUser) and KEDA a TriggerAuthentication naming the same Secrets, and the chart
configures the operator's own admin client from Secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flowmill.manifest import parse_pipeline
from flowmill.spec import PipelineTopic
from flowmill.spec.launch import (
    ENV_KAFKA_CA_FILE,
    ENV_KAFKA_CERT_FILE,
    ENV_KAFKA_KEY_FILE,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SASL_PASSWORD,
    ENV_KAFKA_SASL_USERNAME,
    ENV_KAFKA_SECURITY_PROTOCOL,
    KAFKA_SECURITY_ENV,
    KAFKA_TLS_MOUNT,
)
from flowmill_operator import naming
from flowmill_operator.render import Manifest, RenderError, render
from flowmill_operator.topic_admin import KafkaAdminError, TopicAdmin
from tests.harness.secure_kafka import SecureKafka
from tests.harness.waiting import unique
from tests.operator.fixtures import TEST_RENDER
from tests.operator.test_chart import find, template

PASSWORD = {"name": "app-kafka", "key": "password"}
CA = {"name": "kafka-ca", "key": "ca.pem"}


def _pipeline(security: dict[str, Any], **kafka: Any) -> Any:
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "secure", "namespace": "team"},
            "spec": {
                "kafka": {
                    "bootstrapServers": "kafka:9093",
                    "topicManagement": "admin",
                    **kafka,
                    "security": security,
                },
                "topics": [{"name": "in"}, {"name": "out"}],
                "sources": [
                    {
                        "name": "gen",
                        "to": "in",
                        "generator": {"fields": {"n": {"type": "sequence"}}},
                    }
                ],
                "steps": [{"name": "copy", "from": "in", "sink": {"kafka": {"topic": "out"}}}],
            },
        }
    )


def _workers(manifests: list[Manifest]) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["name"] != naming.api_deployment("secure")
    ]


def _env(deployment: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def _secret_ref(entry: Manifest) -> tuple[str, str]:
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def _tls_sources(deployment: Manifest) -> dict[str, tuple[str, str]]:
    """file in the TLS volume -> (Secret, key), after checking the read-only mount."""
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-tls"]
    assert mount == {"name": "kafka-tls", "mountPath": KAFKA_TLS_MOUNT, "readOnly": True}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
    out = {}
    for source in volume["projected"]["sources"]:
        (item,) = source["secret"]["items"]
        out[item["path"]] = (source["secret"]["name"], item["key"])
    return out


def test_render_sasl_ssl_has_no_literal_credential() -> None:
    p = _pipeline(
        {
            "protocol": "SASL_SSL",
            "tls": {"caSecretRef": CA},
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": "app",
                "passwordSecretRef": PASSWORD,
            },
        }
    )
    out = render(p, TEST_RENDER)
    workers = _workers(out.manifests)
    assert len(workers) == 2  # the source and the step
    for deployment in workers:
        env = _env(deployment)
        assert env[ENV_KAFKA_SECURITY_PROTOCOL]["value"] == "SASL_SSL"
        assert env[ENV_KAFKA_SASL_MECHANISM]["value"] == "SCRAM-SHA-512"
        assert env[ENV_KAFKA_SASL_USERNAME]["value"] == "app"
        assert "value" not in env[ENV_KAFKA_SASL_PASSWORD]
        assert _secret_ref(env[ENV_KAFKA_SASL_PASSWORD]) == ("app-kafka", "password")
        assert env[ENV_KAFKA_CA_FILE]["value"] == f"{KAFKA_TLS_MOUNT}/ca.crt"
        assert _tls_sources(deployment) == {"ca.crt": ("kafka-ca", "ca.pem")}
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert not [a for a in args if "sasl" in a.lower() or "password" in a.lower()]
    # The API reads the dead-letter topics for its health view: the workers' variables, the
    # password a secretKeyRef as theirs.
    (api,) = [
        m
        for m in out.manifests
        if m["kind"] == "Deployment" and m["metadata"]["name"] == naming.api_deployment("secure")
    ]
    api_env = _env(api)
    assert api_env[ENV_KAFKA_SECURITY_PROTOCOL]["value"] == "SASL_SSL"
    assert "value" not in api_env[ENV_KAFKA_SASL_PASSWORD]
    assert _secret_ref(api_env[ENV_KAFKA_SASL_PASSWORD]) == ("app-kafka", "password")
    # Nothing anywhere in the render carries a credential as a value: every variable that
    # could is a secretKeyRef, and the ConfigMap's spec only names Secrets.
    for manifest in out.manifests:
        for container in (
            manifest.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            for entry in container.get("env", []):
                if entry["name"] == ENV_KAFKA_SASL_PASSWORD:
                    assert set(entry) == {"name", "valueFrom"}
    (config,) = [m for m in out.manifests if m["kind"] == "ConfigMap"]
    (document,) = [yaml.safe_load(text) for text in config["data"].values()]
    sasl = document["spec"]["kafka"]["security"]["sasl"]
    assert set(sasl) == {"mechanism", "username", "passwordSecretRef"}


def test_render_strimzi_kafka_user_scram_and_tls() -> None:
    scram = render(
        _pipeline({"protocol": "SASL_SSL", "kafkaUser": "app"}, cluster="prod"), TEST_RENDER
    )
    step = _workers(scram.manifests)[-1]
    env = _env(step)
    assert env[ENV_KAFKA_SASL_MECHANISM]["value"] == "SCRAM-SHA-512"
    assert env[ENV_KAFKA_SASL_USERNAME]["value"] == "app"
    assert _secret_ref(env[ENV_KAFKA_SASL_PASSWORD]) == ("app", "password")
    assert _tls_sources(step) == {"ca.crt": ("prod-cluster-ca-cert", "ca.crt")}

    mtls = render(_pipeline({"protocol": "SSL", "kafkaUser": "app"}, cluster="prod"), TEST_RENDER)
    step = _workers(mtls.manifests)[-1]
    env = _env(step)
    assert ENV_KAFKA_SASL_PASSWORD not in env and ENV_KAFKA_SASL_MECHANISM not in env
    assert env[ENV_KAFKA_CERT_FILE]["value"] == f"{KAFKA_TLS_MOUNT}/user.crt"
    assert env[ENV_KAFKA_KEY_FILE]["value"] == f"{KAFKA_TLS_MOUNT}/user.key"
    assert _tls_sources(step) == {
        "ca.crt": ("prod-cluster-ca-cert", "ca.crt"),
        "user.crt": ("app", "user.crt"),
        "user.key": ("app", "user.key"),
    }


@pytest.mark.parametrize(
    ("security", "kafka", "field", "words"),
    [
        (
            {"protocol": "SSL", "kafkaUser": "app"},
            {},
            "spec.kafka.security.tls.caSecretRef",
            "cluster",
        ),
        (
            {"protocol": "SASL_SSL", "kafkaUser": "app"},
            {"cluster": "prod", "namespace": "kafka"},
            "spec.kafka.security.tls.caSecretRef",
            "namespace kafka",
        ),
    ],
)
def test_render_refuses_what_a_pod_cannot_mount(
    security: dict[str, Any], kafka: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(RenderError) as info:
        render(_pipeline(security, **kafka), TEST_RENDER)
    errors = {e.path: e.message for e in info.value.errors}
    assert field in errors and words in errors[field], errors


def _keda(security: dict[str, Any], **kafka: Any) -> tuple[Manifest, Manifest | None]:
    """The step's ScaledObject and TriggerAuthentication (None if none is rendered)."""
    document = _pipeline(security, **kafka).to_manifest()
    document["spec"]["steps"][0]["autoscaling"] = {"kind": "keda", "maxReplicas": 2}
    out = render(parse_pipeline(document), TEST_RENDER).manifests
    name = naming.step_deployment("secure", "copy")
    (scaled,) = [m for m in out if m["kind"] == "ScaledObject"]
    auths = [m for m in out if m["kind"] == "TriggerAuthentication"]
    assert scaled["metadata"]["name"] == name
    assert all(a["metadata"]["name"] == name for a in auths)
    # Apply order: the TriggerAuthentication before the ScaledObject naming it.
    if auths:
        assert out.index(auths[0]) < out.index(scaled)
    return scaled, (auths[0] if auths else None)


def test_keda_gets_the_workers_credentials_as_secret_references() -> None:
    """KEDA's kafka scaler (docs: scalers/apache-kafka, 'Method 2'): `tls: enable` and
    `sasl: <mode>` in the trigger's metadata, username/password/ca/cert/key from a
    TriggerAuthentication; the ScaledObject holds no credential."""
    sasl = {"mechanism": "SCRAM-SHA-256", "username": "app", "passwordSecretRef": PASSWORD}
    scaled, auth = _keda({"protocol": "SASL_SSL", "tls": {"caSecretRef": CA}, "sasl": sasl})
    assert auth is not None
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["tls"] == "enable"
    assert trigger["metadata"]["sasl"] == "scram_sha256"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert set(trigger["metadata"]).isdisjoint({"username", "password", "ca", "cert", "key"})
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert auth["spec"] == {
        "secretTargetRef": [
            {"parameter": "password", "name": "app-kafka", "key": "password"},
            {"parameter": "ca", "name": "kafka-ca", "key": "ca.pem"},
        ],
        # A literal user name is in no Secret: KEDA reads the worker container's variable.
        "env": [{"parameter": "username", "name": ENV_KAFKA_SASL_USERNAME,
                 "containerName": naming.WORKER_CONTAINER}],
    }  # fmt: skip

    from_secret = {**sasl, "mechanism": "PLAIN", "usernameSecretRef": {"name": "u", "key": "k"}}
    del from_secret["username"]
    scaled, auth = _keda({"protocol": "SASL_PLAINTEXT", "sasl": from_secret})
    assert "tls" not in scaled["spec"]["triggers"][0]["metadata"]
    assert scaled["spec"]["triggers"][0]["metadata"]["sasl"] == "plaintext"
    assert auth is not None and "env" not in auth["spec"]
    assert auth["spec"]["secretTargetRef"][0] == {"parameter": "username", "name": "u", "key": "k"}

    # A Strimzi KafkaUser with mutual TLS: the cluster CA and the user's certificate.
    scaled, auth = _keda({"protocol": "SSL", "kafkaUser": "app"}, cluster="prod")
    assert "sasl" not in scaled["spec"]["triggers"][0]["metadata"]
    assert auth is not None and auth["spec"] == {
        "secretTargetRef": [
            {"parameter": "ca", "name": "prod-cluster-ca-cert", "key": "ca.crt"},
            {"parameter": "cert", "name": "app", "key": "user.crt"},
            {"parameter": "key", "name": "app", "key": "user.key"},
        ]
    }
    # TLS to publicly trusted brokers: nothing to hand over, so no TriggerAuthentication.
    scaled, auth = _keda({"protocol": "SSL"})
    assert auth is None and "authenticationRef" not in scaled["spec"]["triggers"][0]
    assert scaled["spec"]["triggers"][0]["metadata"]["tls"] == "enable"


def test_plaintext_renders_no_security() -> None:
    document = _pipeline({"protocol": "SSL"}).to_manifest()
    del document["spec"]["kafka"]["security"]
    for deployment in _workers(render(parse_pipeline(document), TEST_RENDER).manifests):
        assert not set(_env(deployment)) & set(KAFKA_SECURITY_ENV)
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert "kafka-tls" not in {v["name"] for v in volumes}


def test_topic_admin_over_sasl_ssl(secure_kafka: SecureKafka) -> None:
    name = unique("secadmin")
    wanted = [PipelineTopic(f"{name}-a", 3, 1, {}), PipelineTopic(f"{name}-b", 1, 1, {})]
    address = secure_kafka.address("SASL_SSL")
    with TopicAdmin(address, security=secure_kafka.sasl_ssl()) as admin:
        synced = admin.sync(wanted, [])
    assert sorted(synced.created) == [t.name for t in wanted]
    # Read back over the plaintext listener: an independent client.
    admin_plain = secure_kafka._admin()
    try:
        described = {
            d["topic"]: len(d["partitions"])
            for d in admin_plain.describe_topics([t.name for t in wanted])
        }
    finally:
        admin_plain.close()
    assert described == {f"{name}-a": 3, f"{name}-b": 1}

    with pytest.raises(KafkaAdminError) as info:
        TopicAdmin(address, security=secure_kafka.sasl_ssl(password="wrong"), timeout=5)
    assert "authentication failed" in str(info.value) and "as alice" in str(info.value)


def test_chart_gives_the_operator_admin_security_from_secrets(tmp_path: Path) -> None:
    docs = template(
        tmp_path,
        "kafka.adminSecurity.protocol=SASL_SSL",
        "kafka.adminSecurity.saslMechanism=SCRAM-SHA-512",
        "kafka.adminSecurity.username=flowmill-operator",
        "kafka.adminSecurity.passwordSecret.name=operator-kafka",
        "kafka.adminSecurity.caSecret.name=prod-cluster-ca-cert",
    )
    (deployment,) = find(docs, "Deployment")
    env = _env(deployment)
    assert env[ENV_KAFKA_SECURITY_PROTOCOL]["value"] == "SASL_SSL"
    assert env[ENV_KAFKA_SASL_USERNAME]["value"] == "flowmill-operator"
    assert set(env[ENV_KAFKA_SASL_PASSWORD]) == {"name", "valueFrom"}
    assert _secret_ref(env[ENV_KAFKA_SASL_PASSWORD]) == ("operator-kafka", "password")
    assert env[ENV_KAFKA_CA_FILE]["value"] == f"{KAFKA_TLS_MOUNT}/ca.crt"
    assert _tls_sources(deployment) == {"ca.crt": ("prod-cluster-ca-cert", "ca.crt")}

    (default,) = find(template(tmp_path), "Deployment")
    assert _env(default)[ENV_KAFKA_SECURITY_PROTOCOL]["value"] == "PLAINTEXT"
    assert "kafka-tls" not in {v["name"] for v in default["spec"]["template"]["spec"]["volumes"]}
    assert yaml.safe_dump(docs).count("operator-kafka") == 1
