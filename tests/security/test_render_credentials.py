"""The operator's side: every example Pipeline, given Redis and httpPoll credentials the
only way the spec allows (Secret references), renders them as secretKeyRefs and mounted
Secret files, never as values; a password in a URL is refused with the field named, by
the spec, the operator's settings and the chart."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowmill.manifest import PipelineInvalid, parse_pipeline
from flowmill.redact import url_password
from flowmill.settings import SettingsInvalid
from flowmill.spec import ENV_REDIS_URL
from flowmill.spec.launch import (
    ENV_REDIS_PASSWORD,
    REDIS_TLS_FILES,
    REDIS_TLS_MOUNT,
    http_header_env,
)
from flowmill_operator.render import render, to_yaml
from flowmill_operator.settings import RenderSettings
from tests.operator.helpers import pipeline_documents
from tests.operator.test_chart import find, helm, template
from tests.operator.test_golden import example_files

SECRET = "s3cret-Value-91"
SETTINGS = RenderSettings(image="registry.example/flowmill:test", default_kafka_cluster="events")
REDIS = {
    "url": "rediss://flowmill@redis.prod.svc:6380/0",
    "passwordSecretRef": {"name": "redis-auth", "key": "password"},
    "tls": {
        "caSecretRef": {"name": "redis-ca", "key": "ca.crt"},
        "certSecretRef": {"name": "redis-client", "key": "tls.crt"},
        "keySecretRef": {"name": "redis-client", "key": "tls.key"},
    },
}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+")


def with_credentials(path: Path) -> dict[str, Any]:
    # The first Pipeline of the file (tests/operator/pipelines/kafka_security.yaml has two).
    doc = next(pipeline_documents(path))
    doc["spec"]["redis"] = copy.deepcopy(REDIS)
    for source in doc["spec"].get("sources", []):
        if "httpPoll" in source:
            source["httpPoll"]["headersFrom"] = {
                "Authorization": {"name": "feed-token", "key": "header"}
            }
    return doc


def containers(manifests: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every Deployment."""
    return [
        (m["spec"]["template"]["spec"], c)
        for m in manifests
        if m["kind"] == "Deployment"
        for c in m["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.stem)
def test_credentials_render_as_secret_references(path: Path) -> None:
    pipeline = parse_pipeline(with_credentials(path))
    manifests = render(pipeline, SETTINGS, namespace="team").manifests
    text = to_yaml(manifests)
    assert all(url_password(url) is None for url in _URL.findall(text))
    redis_pods = 0
    for pod, container in containers(manifests):
        env = {e["name"]: e for e in container.get("env", [])}
        assert "--redis-url" not in container["args"]
        for name, entry in env.items():
            if name == ENV_REDIS_PASSWORD or name.startswith("FLOWMILL_HEADER_"):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name
        if ENV_REDIS_URL not in env:
            continue
        redis_pods += 1
        assert env[ENV_REDIS_URL]["value"] == REDIS["url"]
        assert env[ENV_REDIS_PASSWORD]["valueFrom"]["secretKeyRef"] == REDIS["passwordSecretRef"]
        for variable, file in REDIS_TLS_FILES.items():
            assert env[variable]["value"] == f"{REDIS_TLS_MOUNT}/{file}"
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == REDIS_TLS_MOUNT]
        assert mount["readOnly"] is True
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        items = {
            (s["secret"]["name"], i["key"], i["path"])
            for s in volume["projected"]["sources"]
            for i in s["secret"]["items"]
        }
        assert items == {
            ("redis-ca", "ca.crt", "ca.crt"),
            ("redis-client", "tls.crt", "tls.crt"),
            ("redis-client", "tls.key", "tls.key"),
        }
    tables = any(s.sink and s.sink.redis for s in pipeline.spec.steps)
    assert redis_pods >= (1 if tables or pipeline.spec.api.enabled else 0)
    for source in pipeline.spec.sources:
        if source.http_poll is None:
            continue
        [(_, container)] = [
            (p, c) for p, c in containers(manifests) if c["args"][3:5] == ["--source", source.name]
        ]
        env = {e["name"]: e for e in container["env"]}
        ref = env[http_header_env(source.name, "Authorization")]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "feed-token", "key": "header"}


@pytest.mark.parametrize(
    "redis",
    [
        {"url": f"redis://:{SECRET}@redis:6379/0"},
        {"url": f"rediss://flowmill:{SECRET}@redis:6380/0"},
    ],
)
def test_a_password_in_the_redis_url_is_refused(redis: dict[str, Any]) -> None:
    doc = with_credentials(example_files()[0])
    doc["spec"]["redis"] = redis
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline(doc)
    [error] = caught.value.errors
    assert error.path == "spec.redis.url"
    assert "passwordSecretRef" in error.message and "secretRef" in error.message
    assert SECRET not in str(caught.value)


def test_tls_needs_rediss() -> None:
    doc = with_credentials(example_files()[0])
    doc["spec"]["redis"]["url"] = "redis://flowmill@redis:6379/0"
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline(doc)
    assert [e.path for e in caught.value.errors] == ["spec.redis.tls"]


def test_the_operators_default_redis_comes_from_a_secret() -> None:
    with pytest.raises(SettingsInvalid) as caught:
        RenderSettings.from_env(default_redis_url=f"redis://:{SECRET}@redis:6379/0")
    assert "FLOWMILL_DEFAULT_REDIS_URL" in str(caught.value)
    assert "FLOWMILL_DEFAULT_REDIS_SECRET" in str(caught.value)
    assert SECRET not in str(caught.value)
    settings = SETTINGS.model_copy(update={"default_redis_secret": "platform-redis"})
    doc = yaml.safe_load(example_files()[0].read_text())
    doc["spec"].pop("redis", None)
    manifests = render(parse_pipeline(doc), settings, namespace="team").manifests
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for _, c in containers(manifests)
        for e in c.get("env", [])
        if e["name"] == ENV_REDIS_URL
    ]
    assert refs and all(r == {"name": "platform-redis", "key": "url"} for r in refs)


def test_the_apis_prometheus_url_carries_no_password() -> None:
    # Every API Deployment gets the URL as a literal value.
    with pytest.raises(SettingsInvalid) as caught:
        RenderSettings.from_env(prometheus_url=f"http://health:{SECRET}@prometheus:9090")
    assert "FLOWMILL_PROMETHEUS_URL" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_chart_refuses_a_default_url_with_a_password(tmp_path: Path) -> None:
    refused = helm(
        tmp_path,
        "template",
        "fm",
        str(Path(__file__).parents[2] / "charts" / "flowmill"),
        "--set",
        f"redis.defaultUrl=redis://:{SECRET}@redis:6379/0",
        check=False,
    )
    assert refused.returncode != 0 and "defaultUrl" in refused.stderr
    docs = template(tmp_path, "redis.defaultUrlSecret.name=platform-redis")
    [operator] = find(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLOWMILL_DEFAULT_REDIS_SECRET"] == "platform-redis"
    assert env["FLOWMILL_DEFAULT_REDIS_SECRET_KEY"] == "url"
