"""Every FLOWMILL_* variable that the Helm chart or the renderer sets is read by the
component it is set for, under that name (one settings style: flowmill.settings)."""

from __future__ import annotations

import re
from typing import Any

from flowmill.manifest import load_pipelines
from flowmill.spec import ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL
from flowmill.spec.launch import KAFKA_SECURITY_ENV
from flowmill_api.settings import ApiSettings
from flowmill_operator.render import render
from flowmill_operator.settings import OperatorSettings, RenderSettings
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import ROOT, example_files

CONNECTIONS = {ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, *KAFKA_SECURITY_ENV}
"""Read by flowmill.connections (flag, then environment, then the manifest) and
flowmill.kafka_security (spec.kafka.security as variables) for the workers and the API
alike."""


def flowmill_env(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", []) if e["name"].startswith("FLOWMILL_")}


def test_the_charts_operator_variables_are_read_by_the_operator_settings() -> None:
    template = (ROOT / "charts" / "flowmill" / "templates" / "deployment.yaml").read_text()
    set_by_chart = set(re.findall(r"name: (FLOWMILL_[A-Z_]+)", template))
    assert set_by_chart, "no FLOWMILL_* variable found in the chart's Deployment"
    # The operator's own Kafka admin client reads its security settings where every Kafka
    # client of the product does (flowmill.kafka_security), not through OperatorSettings.
    read = OperatorSettings.env_names() | RenderSettings.env_names() | set(KAFKA_SECURITY_ENV)
    assert set_by_chart <= read, sorted(set_by_chart - read)


def test_the_renderers_variables_are_read_by_the_workers_and_the_api() -> None:
    worker_env: set[str] = set()
    api_env: set[str] = set()
    for path in example_files():
        for pipeline in load_pipelines(path):
            for manifest in render(pipeline, TEST_RENDER).manifests:
                if manifest["kind"] != "Deployment":
                    continue
                pod = manifest["spec"]["template"]["spec"]
                args = pod["containers"][0].get("args", [])
                names = set().union(*(flowmill_env(c) for c in pod["containers"]))
                (api_env if args[:1] == ["api"] else worker_env).update(names)
    assert worker_env and api_env
    assert worker_env <= CONNECTIONS, sorted(worker_env - CONNECTIONS)
    read_by_api = ApiSettings.env_names() | CONNECTIONS
    assert api_env <= read_by_api, sorted(api_env - read_by_api)
    assert "FLOWMILL_API_KEYS_DIR" in api_env  # full_features.yaml names an apiKeysSecret
    # The health view's Kafka reader connects as the workers do (kafka_security.yaml).
    assert set(KAFKA_SECURITY_ENV) <= api_env
    with_prometheus = TEST_RENDER.model_copy(update={"prometheus_url": "http://prom:9090"})
    (pipeline,) = load_pipelines(example_files()[0])
    api = next(m for m in render(pipeline, with_prometheus).manifests if _is_api(m))
    api_env = flowmill_env(api["spec"]["template"]["spec"]["containers"][0])
    assert ApiSettings.env_name("prometheus_url") in api_env
    assert RenderSettings.env_name("prometheus_url") == "FLOWMILL_PROMETHEUS_URL"


def _is_api(manifest: dict[str, Any]) -> bool:
    if manifest["kind"] != "Deployment":
        return False
    return manifest["spec"]["template"]["spec"]["containers"][0]["args"][:1] == ["api"]


def test_env_names_follow_the_prefix_unless_a_field_names_its_variable() -> None:
    assert RenderSettings.env_name("image") == "FLOWMILL_IMAGE"
    assert RenderSettings.env_name("pod_disruption_budgets") == "FLOWMILL_PDB"
    assert OperatorSettings.env_name("namespaces") == "FLOWMILL_WATCH_NAMESPACES"
    assert ApiSettings.env_name("rate_limit") == "FLOWMILL_API_RATE_LIMIT"
    assert ApiSettings.env_name("api_keys") == "FLOWMILL_API_KEYS"
