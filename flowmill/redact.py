"""Credentials out of everything a person or a log collector reads: one place that knows
what a secret looks like in a URL, and a logging filter that applies it to every record.

A URL keeps its scheme, host, port, path and the names of its query parameters, so a
redacted line still says where a process connects; a password in the userinfo
(`redis://user:pw@host`) and the values of query parameters named like credentials
(`?token=`, `?apikey=`, `?key=`, ...) become MASK. Exact secret values read from the
environment (FLOWMILL_*PASSWORD*, ...; see `secrets_in_environment`) are masked wherever
they appear, for a credential that reaches a message without its URL around it.

Only the standard library (urllib.parse, re, logging): the rule is a dozen lines, and the
libraries that scrub logs (e.g. for Sentry) are frameworks of their own that would still
need this list of names.

Used by the workers, the API, the operator and `flowmill run`; the Kafka security
settings use it too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

SENSITIVE_QUERY_NAMES = frozenset(
    {
        "token",
        "accesstoken",
        "apikey",
        "key",
        "secret",
        "clientsecret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "signature",
        "sig",
        "credential",
        "credentials",
        "sessionid",
        "code",
    }
)
"""Query parameter names (lower case, without - and _) whose values are masked."""
_SENSITIVE_SUFFIXES = ("token", "key", "secret", "password", "signature")
"""...and every name ending like these (access_token, api-key, subscription-key)."""

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
"""A URL inside free text: a scheme, then everything up to whitespace or a quote."""
_QUERY_PAIR = re.compile(r"([?&])([^=&\s#'\"]+)=([^&\s#'\"]*)")
"""A query parameter in free text without a scheme before it: a request path in an
access log, `/pipelines/x?api_key=K`."""

SECRET_ENV_PATTERN = re.compile(
    r"^FLOWMILL_\w*(PASSWORD|SECRET|TOKEN|PASSPHRASE|_KEY|_KEYS)$|^FLOWMILL_HEADER_\w+$"
    r"|^FLOWMILL_\w*_URL$|^AWS_(SECRET_ACCESS_KEY|SESSION_TOKEN)$"
)
"""Environment variables whose values (or, for *_URL, the URL's password) are secret:
passwords, API keys, httpPoll headersFrom values, and the S3 credentials a Parquet lake's
credentialsSecret mounts under the AWS SDK's names."""
_MIN_SECRET_LENGTH = 4
"""Shorter values are not masked on their own: "abc" would blank half of every line."""


def sensitive_query_name(name: str) -> bool:
    normal = name.lower().replace("-", "").replace("_", "")
    return normal in SENSITIVE_QUERY_NAMES or normal.endswith(_SENSITIVE_SUFFIXES)


def url_password(url: str) -> str | None:
    """The password in a URL's userinfo, decoded; None when it has none (a lone
    userinfo, `redis://app@host`, is a user name, as redis-py reads it)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def redact_url(url: str) -> str:
    """`url` with its userinfo password and credential-like query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL: nothing of it is kept
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(sensitive_query_name(name) for name, _ in pairs):
            query = urlencode(
                [(n, MASK if sensitive_query_name(n) else v) for n, v in pairs],
                quote_via=quote,
                safe="*/:,",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Every URL in `text` redacted, then every one of `secrets` masked."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    text = _QUERY_PAIR.sub(_mask_pair, text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return text


def _mask_pair(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    masked = MASK if sensitive_query_name(name) and value != MASK else value
    return f"{separator}{name}={masked}"


def secrets_in_environment(environ: Mapping[str, str] | None = None) -> set[str]:
    """The secret values a process was given: FLOWMILL_*PASSWORD* (and *SECRET*, *TOKEN*,
    ...) variables, and the passwords inside FLOWMILL_*_URL variables."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        if not value or not SECRET_ENV_PATTERN.match(name):
            continue
        if name.endswith("_URL"):
            password = url_password(value)
            if password:
                found.add(password)
        elif name.endswith("_KEYS"):  # comma-separated, as FLOWMILL_API_KEYS
            found.update(key.strip() for key in value.split(",") if key.strip())
        else:
            found.add(value)
    return found


class RedactingFilter(logging.Filter):
    """Redacts a record's message (arguments merged in) and its traceback text; never
    drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = frozenset(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message, self.secrets)
        if clean != message or record.args:
            # An empty tuple, not None: some formatters (mode's, under Faust) iterate the args.
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        return True


_installed: RedactingFilter | None = None


def install(extra_secrets: Iterable[str] = ()) -> RedactingFilter:
    """Redact every log record of this process from now on, whichever logger or handler
    (uvicorn's, Kopf's, the libraries') it goes through: the filter runs in the log-record
    factory, before any handler sees the record. Idempotent; later calls add secrets."""
    global _installed
    secrets = secrets_in_environment() | set(extra_secrets)
    if _installed is not None:
        _installed.secrets = _installed.secrets | secrets
        return _installed
    active = _installed = RedactingFilter(secrets)
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        active.filter(record)
        return record

    logging.setLogRecordFactory(redacting_factory)
    return active
