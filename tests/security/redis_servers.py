"""Redis servers that demand credentials: requirepass plus an ACL user, and TLS with a CA
the test makes. The session's Redis (tests/harness/kafka_redis_fixtures.py) stays open;
these run beside it, from the same provisioned redis-server binary."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flowmill.local import find_binary
from flowmill.local.ports import LOOPBACK, free_port
from tests.harness.waiting import wait_for

DEFAULT_PASSWORD = "requirepass-Xq7v"
APP_USER = "flowmill-app"
APP_PASSWORD = "acl-pw-Zr9k#@:/"
"""With the characters a URL must escape: the password reaches Redis intact or not at all."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class SecuredRedis:
    port: int
    tls: TlsFiles | None

    @property
    def scheme(self) -> str:
        return "rediss" if self.tls else "redis"

    def client(self, **kwargs: object) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(
            host=LOOPBACK, port=self.port, password=DEFAULT_PASSWORD, **tls, **kwargs
        )  # type: ignore[arg-type]


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowmill-test-redis-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


@contextmanager
def secured_redis(folder: Path, *, tls: bool) -> Iterator[SecuredRedis]:
    """redis-server with requirepass DEFAULT_PASSWORD and the ACL user APP_USER; with
    `tls`, TLS only (no plaintext port), clients not asked for certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    files = make_tls_files(folder) if tls else None
    argv = [
        str(find_binary("redis-server")),
        "--bind", LOOPBACK,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(folder),
        "--logfile", str(folder / "redis.log"),
        "--requirepass", DEFAULT_PASSWORD,
        "--user", APP_USER, "on", f">{APP_PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    if files is None:
        argv += ["--port", str(port)]
    else:
        argv += [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(files.cert),
            "--tls-key-file", str(files.key),
            "--tls-ca-cert-file", str(files.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = SecuredRedis(port, files)
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                log = (folder / "redis.log").read_text() if (folder / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited {proc.returncode}:\n{log[-2000:]}")
            try:
                with server.client(socket_connect_timeout=0.5) as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 15, f"secured redis-server on {port} (tls={tls})")
        yield server
    finally:
        proc.terminate()
        proc.wait(10)
