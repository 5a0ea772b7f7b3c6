"""A real Kafka broker with the listeners real clusters use, for the Kafka security tests:
SSL with a required client certificate (Strimzi's `tls` listener with KafkaUser type tls),
SASL_SSL with SCRAM-SHA-512 (MSK, Strimzi scram-sha-512) and SASL_PLAINTEXT with PLAIN and
SCRAM-SHA-256 (Confluent-style API keys). A PLAINTEXT listener stays for the harness's
own readiness check and topic creation.

The certificates are made here with `cryptography`: a CA, a broker certificate for
127.0.0.1 and localhost, and a client certificate for mutual TLS. SCRAM users are created
by `kafka-storage format --add-scram` (KRaft stores them in the metadata log), PLAIN users
in the listener's JAAS config.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flowmill.kafka_security import KafkaClientSecurity
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK, free_ports

SCRAM_512_USER = "alice"
SCRAM_256_USER = "carol"
PLAIN_USER = "confluent-key"
MTLS_USER = "mtls-user"
"""The client certificate's common name (Kafka's principal User:CN=mtls-user)."""

SECURE_START_TIMEOUT = 180.0


@dataclass(frozen=True)
class Pki:
    """PEM files of the test CA, the broker and the mTLS client."""

    ca_cert: Path
    broker_pem: Path
    """The broker's key and certificate in one file (Kafka's PEM keystore)."""
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    """A CA that signed nothing here: trusting it instead must fail verification."""


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("flowmill test CA")
    _, other_ca = _ca("some other CA")
    broker_key, broker_cert = _leaf(
        ca_key,
        ca_cert,
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_key, client_cert = _leaf(ca_key, ca_cert, MTLS_USER, [], ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(
        folder / "ca.crt",
        folder / "broker.pem",
        folder / "user.crt",
        folder / "user.key",
        folder / "other-ca.crt",
    )
    pki.ca_cert.write_bytes(_pem(ca_cert))
    pki.other_ca_cert.write_bytes(_pem(other_ca))
    pki.broker_pem.write_bytes(_key_pem(broker_key) + _pem(broker_cert))
    pki.client_cert.write_bytes(_pem(client_cert))
    pki.client_key.write_bytes(_key_pem(client_key))
    pki.client_key.chmod(0o600)
    return pki


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, _validity(builder).sign(key, hashes.SHA256())


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, _validity(builder).sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: what Kafka's PEM keystore and Python's ssl both read.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class SecureKafka(EmbeddedKafka):
    """EmbeddedKafka plus SSL (client certificate required), SASL_SSL (SCRAM-SHA-512) and
    SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256) listeners on loopback."""

    def __init__(self, pki: Pki) -> None:
        # It starts mid-suite beside three busy test workers on two cores; with four
        # listeners' TLS and SASL set up it has been seen to need more than the default
        # minute there (CI, stop 18). The wait ends as soon as it answers.
        super().__init__(start_timeout=SECURE_START_TIMEOUT)
        self.pki = pki
        self.passwords = {
            SCRAM_512_USER: secrets.token_urlsafe(16),
            SCRAM_256_USER: secrets.token_urlsafe(16),
            PLAIN_USER: secrets.token_urlsafe(16),
        }
        self.ssl_port = self.sasl_ssl_port = self.sasl_plaintext_port = 0

    def _extra_properties(self) -> dict[str, str]:
        self.ssl_port, self.sasl_ssl_port, self.sasl_plaintext_port = free_ports(3)
        while {self.port, self.controller_port} & {
            self.ssl_port,
            self.sasl_ssl_port,
            self.sasl_plaintext_port,
        }:
            self.ssl_port, self.sasl_ssl_port, self.sasl_plaintext_port = free_ports(3)
        clients = {
            "PLAINTEXT": self.port,
            "SSL": self.ssl_port,
            "SASL_SSL": self.sasl_ssl_port,
            "SASL_PLAINTEXT": self.sasl_plaintext_port,
        }
        advertised = ",".join(f"{name}://{LOOPBACK}:{port}" for name, port in clients.items())
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{PLAIN_USER}="{self.passwords[PLAIN_USER]}";'
        )
        return {
            "listeners": f"{advertised},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": advertised,
            "listener.security.protocol.map": ",".join(
                [*(f"{name}:{name}" for name in clients), "CONTROLLER:PLAINTEXT"]
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.pki.broker_pem),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.pki.ca_cert),
            "listener.name.ssl.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain,
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram,
        }

    def _format_options(self) -> list[str]:
        return [
            "--add-scram",
            f"SCRAM-SHA-512=[name={SCRAM_512_USER},password={self.passwords[SCRAM_512_USER]}]",
            "--add-scram",
            f"SCRAM-SHA-256=[name={SCRAM_256_USER},password={self.passwords[SCRAM_256_USER]}]",
        ]

    # -- what clients of each listener use ------------------------------------------------

    def address(self, protocol: str) -> str:
        port = {
            "PLAINTEXT": self.port,
            "SSL": self.ssl_port,
            "SASL_SSL": self.sasl_ssl_port,
            "SASL_PLAINTEXT": self.sasl_plaintext_port,
        }[protocol]
        return f"{LOOPBACK}:{port}"

    def sasl_ssl(self, password: str | None = None) -> KafkaClientSecurity:
        """SCRAM-SHA-512 over TLS as alice (MSK's and Strimzi's scram-sha-512)."""
        return KafkaClientSecurity(
            protocol="SASL_SSL",
            mechanism="SCRAM-SHA-512",
            username=SCRAM_512_USER,
            password=password or self.passwords[SCRAM_512_USER],
            ca_file=str(self.pki.ca_cert),
        )

    def mtls(self) -> KafkaClientSecurity:
        """TLS with the client certificate (Strimzi's KafkaUser type tls)."""
        return KafkaClientSecurity(
            protocol="SSL",
            ca_file=str(self.pki.ca_cert),
            cert_file=str(self.pki.client_cert),
            key_file=str(self.pki.client_key),
        )

    def sasl_plain(self) -> KafkaClientSecurity:
        """PLAIN without TLS (Confluent-style API key and secret)."""
        return KafkaClientSecurity(
            protocol="SASL_PLAINTEXT",
            mechanism="PLAIN",
            username=PLAIN_USER,
            password=self.passwords[PLAIN_USER],
        )


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """One secured broker for the session (it starts in seconds, like kafka_broker).
    Topics are not auto-created: create them with create_topics() (plaintext listener)."""
    with SecureKafka(make_pki(tmp_path_factory.mktemp("kafka-pki"))) as broker:
        yield broker
