"""spec.kafka.security validation (errors name the field) and the client security read from
the environment (errors name the variable; the password never shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity, KafkaSecurityInvalid
from flowmill.manifest import PipelineInvalid, parse_pipeline
from flowmill.spec.launch import (
    ENV_KAFKA_CA_FILE,
    ENV_KAFKA_CERT_FILE,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SASL_PASSWORD,
    ENV_KAFKA_SASL_USERNAME,
    ENV_KAFKA_SECURITY_PROTOCOL,
)

PASSWORD_REF = {"name": "kafka-creds", "key": "password"}


def _pipeline(security: dict[str, Any], **kafka: Any) -> Any:
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "sec"},
            "spec": {
                "kafka": {"bootstrapServers": "b:9093", **kafka, "security": security},
                "topics": [{"name": "t"}],
            },
        }
    )


def _errors(security: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PipelineInvalid) as info:
        _pipeline(security)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize(
    ("security", "field", "words"),
    [
        ({"protocol": "SASL_SSL"}, "spec.kafka.security.sasl", "needs sasl"),
        (
            {"protocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u"}},
            "spec.kafka.security.sasl.passwordSecretRef",
            "required",
        ),
        (
            {"protocol": "PLAINTEXT", "tls": {"caSecretRef": PASSWORD_REF}},
            "spec.kafka.security.tls",
            "protocol PLAINTEXT",
        ),
        (
            {
                "protocol": "SSL",
                "sasl": {"mechanism": "PLAIN", "username": "u", "passwordSecretRef": PASSWORD_REF},
            },
            "spec.kafka.security.sasl",
            "protocol SSL",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "PLAIN", "username": "u", "password": "hunter2"},
            },
            "spec.kafka.security.sasl.password",
            "literal password is refused",
        ),
        (
            {"protocol": "SSL", "tls": {"insecureSkipVerify": True}},
            "spec.kafka.security.tls.insecureSkipVerify",
            "refused",
        ),
        (
            {"protocol": "SSL", "tls": {"certSecretRef": {"name": "u", "key": "user.crt"}}},
            "spec.kafka.security.tls.keySecretRef",
            "both",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "PLAIN", "passwordSecretRef": PASSWORD_REF},
            },
            "spec.kafka.security.sasl.username",
            "exactly one",
        ),
        (
            {"protocol": "PLAINTEXT", "kafkaUser": "app"},
            "spec.kafka.security.kafkaUser",
            "PLAINTEXT",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "kafkaUser": "app",
                "sasl": {"mechanism": "PLAIN", "username": "u", "passwordSecretRef": PASSWORD_REF},
            },
            "spec.kafka.security.sasl",
            "kafkaUser supplies",
        ),
    ],
)
def test_refused_security_names_the_field(security: dict[str, Any], field: str, words: str) -> None:
    errors = _errors(security)
    assert field in errors, errors
    assert words in errors[field]
    assert "hunter2" not in str(errors)


def test_valid_security_kinds() -> None:
    ref = {"name": "s", "key": "k"}
    for security in (
        {"protocol": "SASL_SSL", "kafkaUser": "app"},
        {"protocol": "SSL", "kafkaUser": "app", "tls": {"caSecretRef": ref}},
        {"protocol": "SSL", "tls": {"caSecretRef": ref, "certSecretRef": ref, "keySecretRef": ref}},
        {
            "protocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "passwordSecretRef": ref},
        },
        {
            "protocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "PLAIN", "usernameSecretRef": ref, "passwordSecretRef": ref},
        },
    ):
        kafka = _pipeline(security).spec.kafka
        assert kafka.security is not None and kafka.security.protocol == security["protocol"]


def test_client_security_from_env(tmp_path: Path) -> None:
    assert KafkaClientSecurity.from_env({}) == PLAINTEXT
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here")
    env = {
        ENV_KAFKA_SECURITY_PROTOCOL: "SASL_SSL",
        ENV_KAFKA_SASL_MECHANISM: "SCRAM-SHA-512",
        ENV_KAFKA_SASL_USERNAME: "alice",
        ENV_KAFKA_SASL_PASSWORD: "s3cret-value",
        ENV_KAFKA_CA_FILE: str(ca),
    }
    security = KafkaClientSecurity.from_env(env)
    assert security.env() == env
    assert "s3cret-value" not in repr(security) + security.describe()
    assert security.describe() == "SASL_SSL SCRAM-SHA-512 as alice"

    with pytest.raises(KafkaSecurityInvalid) as info:
        KafkaClientSecurity.from_env({**env, ENV_KAFKA_SASL_PASSWORD: ""})
    assert f"{ENV_KAFKA_SASL_PASSWORD} is required with SASL_SSL" in str(info.value)
    with pytest.raises(KafkaSecurityInvalid) as info:
        KafkaClientSecurity.from_env({**env, ENV_KAFKA_SECURITY_PROTOCOL: "PLAINTEXT"})
    message = str(info.value)
    assert f"{ENV_KAFKA_SASL_PASSWORD} is set but protocol PLAINTEXT has no SASL" in message
    assert f"{ENV_KAFKA_CA_FILE} is set but protocol PLAINTEXT has no TLS" in message
    assert "s3cret-value" not in message
    with pytest.raises(KafkaSecurityInvalid) as info:
        KafkaClientSecurity.from_env({**env, ENV_KAFKA_CERT_FILE: str(ca)})
    assert "set both" in str(info.value)
    with pytest.raises(KafkaSecurityInvalid) as info:
        KafkaClientSecurity.from_env({**env, ENV_KAFKA_CA_FILE: str(tmp_path / "missing.crt")})
    assert f"{ENV_KAFKA_CA_FILE}: cannot read" in str(info.value)
    with pytest.raises(KafkaSecurityInvalid) as info:
        KafkaClientSecurity.from_env({**env, ENV_KAFKA_SASL_MECHANISM: "GSSAPI"})
    assert ENV_KAFKA_SASL_MECHANISM in str(info.value)
