"""Where a component finds Kafka and Redis: flag, then environment, then the manifest."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from flowmill.redact import redact_url
from flowmill.spec import ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, Pipeline, strimzi_bootstrap_servers
from flowmill.spec.launch import ENV_REDIS_PASSWORD, REDIS_TLS_FILES


class ConnectionMissing(ValueError):
    """Neither a flag, the environment nor the manifest says where a service is."""


def bootstrap_servers(pipeline: Pipeline, flag: str | None = None) -> str:
    """Kafka bootstrap servers for this Pipeline."""
    kafka = pipeline.spec.kafka
    found = flag or os.environ.get(ENV_BOOTSTRAP_SERVERS) or kafka.bootstrap_servers
    if not found and kafka.cluster:
        # An unset spec.kafka.namespace means the Pipeline's own.
        namespace = kafka.namespace or pipeline.metadata.namespace
        found = strimzi_bootstrap_servers(kafka.cluster, namespace)
    if not found:
        raise ConnectionMissing(
            f"no Kafka for Pipeline {pipeline.name}: pass --bootstrap-servers, set "
            f"{ENV_BOOTSTRAP_SERVERS}, or set spec.kafka.bootstrapServers"
        )
    return found


def redis_url(pipeline: Pipeline, flag: str | None = None) -> str:
    """Redis URL for this Pipeline, with the credentials of the environment in it (a
    secretRef's URL, a passwordSecretRef's password, spec.redis.tls's files all arrive
    as variables): what redis-py and the API's pool connect with. Log it redacted."""
    found = flag or os.environ.get(ENV_REDIS_URL) or pipeline.spec.redis.url
    if not found:
        raise ConnectionMissing(
            f"no Redis for Pipeline {pipeline.name}: pass --redis-url, set {ENV_REDIS_URL}, "
            "or set spec.redis.url"
        )
    return with_redis_credentials(found)


# redis-py passes query parameters it does not parse to the connection as keyword
# arguments, so these reach its SSL connection; the API's pool reads the same names.
REDIS_TLS_QUERY = {
    file_env: query
    for file_env, query in zip(
        REDIS_TLS_FILES, ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"), strict=True
    )
}
"""The redis-py URL parameter each TLS file variable becomes."""


def with_redis_credentials(url: str, environ: Mapping[str, str] | None = None) -> str:
    """`url` with FLOWMILL_REDIS_PASSWORD as its password (unless it has one) and the
    FLOWMILL_REDIS_*_FILE paths as redis-py's ssl_* parameters."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    netloc = parts.netloc
    password = environ.get(ENV_REDIS_PASSWORD)
    if password and parts.password is None:
        user = netloc.rsplit("@", 1)[0] if "@" in netloc else ""
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{user}:{quote(password, safe='')}@{host}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    named = {name for name, _ in query}
    for file_env, name in REDIS_TLS_QUERY.items():
        path = environ.get(file_env)
        if path and name not in named:
            if parts.scheme != "rediss":
                raise ConnectionMissing(
                    f"{file_env} is set but the Redis URL {redact_url(url)} is not rediss://"
                )
            query.append((name, path))
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
