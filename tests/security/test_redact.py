"""flowmill.redact: what a redacted URL, text and log record keep and what they lose."""

from __future__ import annotations

import logging

import pytest

from flowmill import redact
from flowmill.redact import MASK, RedactingFilter, redact_text, redact_url, url_password


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cr3t@127.0.0.1:6379/0", f"redis://:{MASK}@127.0.0.1:6379/0"),
        ("rediss://app:s3cr3t@r.example:6380/2", f"rediss://app:{MASK}@r.example:6380/2"),
        # A lone userinfo is a user name (an ACL user whose password comes from a Secret).
        ("redis://app@r:6379", "redis://app@r:6379"),
        ("https://bob@h.example/x", "https://bob@h.example/x"),
        (
            "https://u:p%40ss@h.example/feed.json?apikey=k1&lang=en&access_token=t2",
            f"https://u:{MASK}@h.example/feed.json?apikey={MASK}&lang=en&access_token={MASK}",
        ),
        (
            "http://h/x?Subscription-Key=k&key=v&page=2",
            f"http://h/x?Subscription-Key={MASK}&key={MASK}&page=2",
        ),
        ("http://h/x?page=2&sort=asc", "http://h/x?page=2&sort=asc"),
        ("http://[::1/x", MASK),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_password() -> None:
    assert url_password("redis://:p%40ss@h:1/0") == "p@ss"
    assert url_password("redis://user:pw@h") == "pw"
    assert url_password("redis://lone@h") is None
    assert url_password("https://bob@h/x") is None
    assert url_password("redis://h:6379/0") is None


def test_redact_text_masks_urls_and_known_secrets() -> None:
    text = "GET https://a:b@h/x?token=t1 failed: server said hunter22 (see http://ok/)"
    assert redact_text(text, ["hunter22", "ab"]) == (
        f"GET https://a:{MASK}@h/x?token={MASK} failed: server said {MASK} (see http://ok/)"
    )


def test_redact_text_masks_query_values_of_bare_paths() -> None:
    line = '127.0.0.1:5 - "GET /pipelines/p/tables/t?api_key=K9&limit=5 HTTP/1.1" 200'
    assert redact_text(line) == (
        f'127.0.0.1:5 - "GET /pipelines/p/tables/t?api_key={MASK}&limit=5 HTTP/1.1" 200'
    )


def test_secrets_in_environment() -> None:
    env = {
        "FLOWMILL_REDIS_URL": "redis://:from-url@h/0",
        "FLOWMILL_REDIS_PASSWORD": "from-password",
        "FLOWMILL_KAFKA_SASL_PASSWORD": "from-kafka",
        "FLOWMILL_BOOTSTRAP_SERVERS": "h:9092",
        "FLOWMILL_DEFAULT_REDIS_URL": "redis://h/0",
        "FLOWMILL_HEADER_FEED_AUTHORIZATION": "Bearer from-header",
        "FLOWMILL_API_KEYS": "key-one, key-two",
        "FLOWMILL_API_KEYS_DIR": "/var/run/keys",
        "PASSWORD": "not-ours",
        "AWS_ACCESS_KEY_ID": "AKIDNOTSECRET",
        "AWS_SECRET_ACCESS_KEY": "from-aws-secret",
        "AWS_SESSION_TOKEN": "from-aws-token",
    }
    assert redact.secrets_in_environment(env) == {
        "from-aws-secret",
        "from-aws-token",
        "from-url",
        "from-password",
        "from-kafka",
        "Bearer from-header",
        "key-one",
        "key-two",
    }


def test_filter_redacts_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.security.redact")
    handler_filter = RedactingFilter(["topsecret"])
    caplog.handler.addFilter(handler_filter)
    try:
        try:
            raise ValueError("cannot reach redis://:topsecret@h:1/0")
        except ValueError:
            logger.exception("poll of %s failed", "https://x/y?apikey=abc123")
    finally:
        caplog.handler.removeFilter(handler_filter)
    record = caplog.records[-1]
    assert record.getMessage() == f"poll of https://x/y?apikey={MASK} failed"
    assert "topsecret" not in caplog.text and "abc123" not in caplog.text
    assert f"redis://:{MASK}@h:1/0" in caplog.text


def test_install_covers_every_logger(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWMILL_REDIS_PASSWORD", "env-secret-1")
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(redact, "_installed", None)
    try:
        redact.install()
        logging.getLogger("some.library").warning("auth with env-secret-1 at %s", "redis://:x1y2@h")
    finally:
        logging.setLogRecordFactory(factory)
    assert caplog.records[-1].getMessage() == f"auth with {MASK} at redis://:{MASK}@h"
