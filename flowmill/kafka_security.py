"""How every Kafka client of flowmill connects: the one place that turns the security
variables (flowmill/spec/launch.py; the operator renders them from spec.kafka.security,
the chart from its values, `flowmill run` from its flags) into keyword arguments for
aiokafka (workers) and kafka-python (the operator's topic admin, `flowmill run`'s topic
creation).

The password only ever travels in an environment variable filled from a Secret; the CA,
certificate and key are files (a Secret volume in a pod). Nothing here logs or repeats
the password: describe() names the protocol, mechanism and user only.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, model_validator

from flowmill.spec.launch import (
    ENV_KAFKA_CA_FILE,
    ENV_KAFKA_CERT_FILE,
    ENV_KAFKA_KEY_FILE,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SASL_PASSWORD,
    ENV_KAFKA_SASL_USERNAME,
    ENV_KAFKA_SECURITY_PROTOCOL,
)
from flowmill.spec.pipeline import SASL_PROTOCOLS, TLS_PROTOCOLS, KafkaProtocol, SaslMechanism

_FIELD_ENV = {
    "protocol": ENV_KAFKA_SECURITY_PROTOCOL,
    "mechanism": ENV_KAFKA_SASL_MECHANISM,
    "username": ENV_KAFKA_SASL_USERNAME,
    "password": ENV_KAFKA_SASL_PASSWORD,
    "ca_file": ENV_KAFKA_CA_FILE,
    "cert_file": ENV_KAFKA_CERT_FILE,
    "key_file": ENV_KAFKA_KEY_FILE,
}


class KafkaSecurityInvalid(ValueError):
    """The security variables contradict each other or name unreadable files; the message
    names the variables."""


class KafkaClientSecurity(BaseModel):
    """Protocol and credentials of a Kafka client; the default is PLAINTEXT."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: KafkaProtocol = "PLAINTEXT"
    mechanism: SaslMechanism | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None
    """PEM CA bundle; unset with TLS: the system's trust store."""
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        sasl = self.protocol in SASL_PROTOCOLS
        tls = self.protocol in TLS_PROTOCOLS
        if sasl:
            for name in ("mechanism", "username", "password"):
                if not getattr(self, name):
                    problems.append(f"{_FIELD_ENV[name]} is required with {self.protocol}")
        else:
            problems += [
                f"{_FIELD_ENV[n]} is set but protocol {self.protocol} has no SASL"
                for n in ("mechanism", "username", "password")
                if getattr(self, n)
            ]
        files = {n: getattr(self, n) for n in ("ca_file", "cert_file", "key_file")}
        if not tls:
            problems += [
                f"{_FIELD_ENV[n]} is set but protocol {self.protocol} has no TLS"
                for n, path in files.items()
                if path
            ]
        elif bool(self.cert_file) != bool(self.key_file):
            problems.append(f"set both {ENV_KAFKA_CERT_FILE} and {ENV_KAFKA_KEY_FILE}, or neither")
        else:
            for name, path in files.items():
                if path and not os.access(path, os.R_OK):
                    problems.append(f"{_FIELD_ENV[name]}: cannot read {path}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaClientSecurity:
        """From the variables (empty ones count as unset, as the renderer leaves them)."""
        environ = os.environ if environ is None else environ
        values = {f: environ[v] for f, v in _FIELD_ENV.items() if environ.get(v)}
        try:
            return cls(**values)
        except ValidationError as err:
            raise KafkaSecurityInvalid(
                "Kafka security: " + "; ".join(_describe_error(e) for e in err.errors())
            ) from None

    def env(self) -> dict[str, str]:
        """The variables that give a child process this security (for `flowmill run`)."""
        out = {}
        for name, variable in _FIELD_ENV.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value and not (name == "protocol" and value == "PLAINTEXT"):
                out[variable] = value
        return out

    def describe(self) -> str:
        """e.g. `SASL_SSL SCRAM-SHA-512 as alice`: for messages and logs, never the password."""
        parts: list[str] = [self.protocol]
        if self.mechanism:
            parts.append(f"{self.mechanism} as {self.username}")
        if self.cert_file:
            parts.append("with a client certificate")
        return " ".join(parts)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying context (hostname checked, the CA file or the system's trust)."""
        if self.protocol not in TLS_PROTOCOLS:
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
        )

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every Kafka client: aiokafka's producer and consumer and
        kafka-python's admin client take the same names (given an ssl_context,
        kafka-python ignores its own ssl_* options)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.protocol in SASL_PROTOCOLS:
            assert self.password is not None  # checked by _consistent
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password.get_secret_value()
        return kwargs


PLAINTEXT = KafkaClientSecurity()


def _describe_error(error: Any) -> str:
    loc = error.get("loc") or ()
    where = _FIELD_ENV.get(str(loc[0])) if loc else None
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


async def refusal(
    bootstrap_servers: str, security: KafkaClientSecurity, timeout: float = 10.0
) -> str | None:
    """Why Kafka refuses this security (a wrong password, an unknown user or mechanism, a
    certificate either side does not trust), or None when the first broker that answers
    accepts it, or none answers (unreachable is not a security problem).

    Clients hide the cause: aiokafka raises "Unable to bootstrap" and only logs it,
    kafka-python reports an incompatible broker version; one direct connection tells.
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaConnectionError, KafkaError

    for server in (s.strip() for s in bootstrap_servers.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id="flowmill-security-check",
                    request_timeout_ms=int(timeout * 1000),
                    **security.kwargs(),
                ),
                timeout,
            )
        except ssl.SSLError as err:
            return f"Kafka at {server}: TLS with {security.describe()} failed: {err}"
        except KafkaConnectionError as err:
            return (
                f"Kafka at {server} closed the connection of {security.describe()} while it "
                f"was set up ({err}): a listener that requires a client certificate, or one "
                "with another security protocol"
            )
        except KafkaError as err:
            what = security.describe()
            return f"Kafka at {server} refused {what}: authentication failed ({err})"
        except (OSError, TimeoutError, ValueError):
            continue
        conn.close()
        return None
    return None


def refusal_sync(
    bootstrap_servers: str, security: KafkaClientSecurity, timeout: float = 10.0
) -> str | None:
    """refusal() for blocking callers (kafka-python's admin client, in a thread)."""
    return asyncio.run(refusal(bootstrap_servers, security, timeout))
