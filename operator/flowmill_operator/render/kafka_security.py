"""spec.kafka.security as pod configuration: the FLOWMILL_KAFKA_* variables that
flowmill/kafka_security.py reads in the worker, and one read-only volume with the CA,
certificate and key. The password (and a username from a Secret) is always a
secretKeyRef, so no credential is a literal in the Deployment, in argv or in the spec's
ConfigMap (which only names Secrets).

`kafkaUser` is resolved here to the Secrets Strimzi creates: the KafkaUser's own Secret
(user.crt and user.key for authentication type tls; password for scram-sha-512) and the
cluster CA in {cluster}-cluster-ca-cert (ca.crt).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from flowmill.manifest import FieldError
from flowmill.spec import Pipeline
from flowmill.spec.launch import (
    ENV_KAFKA_CA_FILE,
    ENV_KAFKA_CERT_FILE,
    ENV_KAFKA_KEY_FILE,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SASL_PASSWORD,
    ENV_KAFKA_SASL_USERNAME,
    ENV_KAFKA_SECURITY_PROTOCOL,
    KAFKA_TLS_FILES,
    KAFKA_TLS_MOUNT,
)
from flowmill.spec.pipeline import SASL_PROTOCOLS, TLS_PROTOCOLS, SecretKeyRef

if TYPE_CHECKING:
    from flowmill_operator.render.context import RenderContext

Manifest = dict[str, Any]

VOLUME = "kafka-tls"
STRIMZI_USER_CERT = "user.crt"
STRIMZI_USER_KEY = "user.key"
STRIMZI_USER_PASSWORD = "password"
STRIMZI_CA_KEY = "ca.crt"
STRIMZI_USER_MECHANISM = "SCRAM-SHA-512"
"""The only SASL mechanism of a Strimzi KafkaUser (authentication type scram-sha-512)."""


def strimzi_cluster_ca(cluster: str) -> SecretKeyRef:
    """The Secret Strimzi's cluster operator keeps the brokers' CA certificate in."""
    return SecretKeyRef(name=f"{cluster}-cluster-ca-cert", key=STRIMZI_CA_KEY)


@dataclass(frozen=True)
class PodKafkaSecurity:
    """What a worker pod is given; every credential a Secret reference."""

    protocol: str
    mechanism: str | None = None
    username: str | None = None
    username_ref: SecretKeyRef | None = None
    password_ref: SecretKeyRef | None = None
    files: dict[str, SecretKeyRef] = field(default_factory=dict)
    """Variable (ENV_KAFKA_CA_FILE, ...) -> the Secret key mounted as its file."""


def resolve(
    pipeline: Pipeline, cluster: str | None
) -> tuple[PodKafkaSecurity | None, list[FieldError]]:
    """The pod security of spec.kafka.security (None: PLAINTEXT), or the errors that
    keep it from running in a cluster. `cluster` is the Strimzi Kafka resource in use
    (the spec's or the operator's default)."""
    security = pipeline.spec.kafka.security
    if security is None or security.protocol == "PLAINTEXT":
        return None, []
    where = "spec.kafka.security"
    errors: list[FieldError] = []
    user, tls, sasl = security.kafka_user, security.tls, security.sasl
    files: dict[str, SecretKeyRef] = {}
    if security.protocol in TLS_PROTOCOLS:
        ca = tls.ca_secret_ref if tls else None
        if ca is None and cluster:
            # A Strimzi listener's certificate is signed by the cluster CA, not a public one.
            ca = strimzi_cluster_ca(cluster)
            kafka_ns, own_ns = pipeline.spec.kafka.namespace, pipeline.metadata.namespace
            if kafka_ns and own_ns and kafka_ns != own_ns:
                errors.append(
                    FieldError(
                        f"{where}.tls.caSecretRef",
                        f"the cluster CA Secret {ca.name} is in namespace {kafka_ns} and a pod "
                        f"mounts Secrets of its own namespace ({own_ns}) only: copy it there "
                        "and name it in caSecretRef",
                    )
                )
        elif ca is None and user:
            errors.append(
                FieldError(
                    f"{where}.tls.caSecretRef",
                    "kafkaUser with TLS needs the brokers' CA: set spec.kafka.cluster (its "
                    "{cluster}-cluster-ca-cert Secret) or tls.caSecretRef",
                )
            )
        if ca is not None:
            files[ENV_KAFKA_CA_FILE] = ca
        if user and security.protocol == "SSL":
            files[ENV_KAFKA_CERT_FILE] = SecretKeyRef(name=user, key=STRIMZI_USER_CERT)
            files[ENV_KAFKA_KEY_FILE] = SecretKeyRef(name=user, key=STRIMZI_USER_KEY)
        elif tls and tls.cert_secret_ref and tls.key_secret_ref:
            files[ENV_KAFKA_CERT_FILE] = tls.cert_secret_ref
            files[ENV_KAFKA_KEY_FILE] = tls.key_secret_ref
    pod = PodKafkaSecurity(security.protocol, files=files)
    if security.protocol in SASL_PROTOCOLS and user:
        password = SecretKeyRef(name=user, key=STRIMZI_USER_PASSWORD)
        pod = replace(pod, mechanism=STRIMZI_USER_MECHANISM, username=user, password_ref=password)
    elif security.protocol in SASL_PROTOCOLS and sasl is not None:
        pod = replace(
            pod,
            mechanism=sasl.mechanism,
            username=sasl.username,
            username_ref=sasl.username_secret_ref,
            password_ref=sasl.password_secret_ref,
        )
    return pod, errors


def kafka_security_env(ctx: RenderContext) -> list[Manifest]:
    """The worker's FLOWMILL_KAFKA_* variables; nothing for PLAINTEXT."""
    pod = ctx.kafka_security
    if pod is None:
        return []
    env: list[Manifest] = [{"name": ENV_KAFKA_SECURITY_PROTOCOL, "value": pod.protocol}]
    if pod.mechanism:
        env.append({"name": ENV_KAFKA_SASL_MECHANISM, "value": pod.mechanism})
    if pod.username_ref is not None:
        env.append(_from_secret(ENV_KAFKA_SASL_USERNAME, pod.username_ref))
    elif pod.username:
        env.append({"name": ENV_KAFKA_SASL_USERNAME, "value": pod.username})
    if pod.password_ref is not None:
        env.append(_from_secret(ENV_KAFKA_SASL_PASSWORD, pod.password_ref))
    for variable in pod.files:
        env.append({"name": variable, "value": f"{KAFKA_TLS_MOUNT}/{KAFKA_TLS_FILES[variable]}"})
    return env


def kafka_tls_volume(ctx: RenderContext) -> tuple[list[Manifest], list[Manifest]]:
    """The volume and mount with the CA, certificate and key; nothing without files."""
    pod = ctx.kafka_security
    if pod is None or not pod.files:
        return [], []
    sources = [
        {"secret": {"name": ref.name, "items": [{"key": ref.key, "path": KAFKA_TLS_FILES[var]}]}}
        for var, ref in pod.files.items()
    ]
    # Projected: the CA and the user's certificate live in different Secrets (Strimzi's
    # cluster CA and the KafkaUser's). 0440: readable by the pod's group (fsGroup) only.
    volume = {"name": VOLUME, "projected": {"sources": sources, "defaultMode": 0o440}}
    return [volume], [{"name": VOLUME, "mountPath": KAFKA_TLS_MOUNT, "readOnly": True}]


def _from_secret(variable: str, ref: SecretKeyRef) -> Manifest:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
