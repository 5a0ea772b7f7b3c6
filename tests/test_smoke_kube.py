"""Smoke tests for the local control plane, the generated Pipeline CRD, and helm."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill.local import find_binary
from tests.harness.kube import KubeControlPlane
from tests.harness.waiting import wait_for

CRD_PATH = Path(__file__).resolve().parents[1] / "k8s" / "crd" / "pipelines.flowmill.dev.yaml"
GROUP, VERSION, PLURAL = "flowmill.dev", "v1alpha1", "pipelines"

# The example from the design doc.
VALID_PIPELINE = yaml.safe_load(
    """
apiVersion: flowmill.dev/v1alpha1
kind: Pipeline
metadata: {name: trip-metrics}
spec:
  kafka: {cluster: events, bootstrapServers: events-kafka-bootstrap:9092}
  redis: {url: redis://redis:6379/0}
  topics:
    - {name: trips, partitions: 6, replicas: 3, config: {retention.ms: "86400000"}}
    - {name: trips-dlq, partitions: 1}
  sources:
    - name: replay
      fileReplay: {path: /data/trips.csv, format: csv, rate: 2000}
      to: trips
      key: region_id
  steps:
    - name: by-region
      from: trips
      validate: {schema: {type: object, required: [region_id]}, deadLetter: trips-dlq}
      window: {type: tumbling, size: 1m, eventTime: event_time, allowedLateness: 10s}
      keyBy: region_id
      aggregate: {trips: count, revenue: {sum: fare}, avg_fare: {avg: fare}, max_fare: {max: fare}}
      sink: {redis: {table: region_metrics, ttl: 24h}}
      autoscaling: {minReplicas: 1, maxReplicas: 6, lagPerReplica: 5000}
  api: {replicas: 2, autoscaling: {minReplicas: 2, maxReplicas: 10, cpu: 70}}
"""
)


def pipeline(name: str, mutate: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    body = copy.deepcopy(VALID_PIPELINE)
    body["metadata"]["name"] = name
    if mutate is not None:
        mutate(body["spec"])
    return body


def create_pipeline(
    api_client: k8s_client.ApiClient, namespace: str, body: dict[str, Any]
) -> dict[str, Any]:
    created = k8s_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return cast(dict[str, Any], created)


def error_message(e: ApiException) -> str:
    return str(json.loads(e.body or "{}").get("message", e.body))


@pytest.fixture(scope="module")
def pipeline_crd(kube_control_plane: KubeControlPlane) -> Iterator[dict[str, Any]]:
    yield kube_control_plane.install_crd(CRD_PATH)


# -- the control plane itself ---------------------------------------------------------------


def test_control_plane_starts_quickly(kube_control_plane: KubeControlPlane) -> None:
    assert kube_control_plane.startup_seconds is not None
    assert kube_control_plane.startup_seconds < 30


def test_deployment_gets_replicaset(
    kube_api_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    m = k8s_client
    apps = m.AppsV1Api(kube_api_client)
    labels = {"app": "smoke"}
    deployment = apps.create_namespaced_deployment(
        kube_namespace,
        m.V1Deployment(
            metadata=m.V1ObjectMeta(name="smoke"),
            spec=m.V1DeploymentSpec(
                replicas=1,
                selector=m.V1LabelSelector(match_labels=labels),
                template=m.V1PodTemplateSpec(
                    metadata=m.V1ObjectMeta(labels=labels),
                    spec=m.V1PodSpec(containers=[m.V1Container(name="c", image="busybox:1.36")]),
                ),
            ),
        ),
    )
    assert deployment.metadata is not None
    uid = deployment.metadata.uid

    def owned_replicaset() -> k8s_client.V1ReplicaSet | None:
        for rs in apps.list_namespaced_replica_set(kube_namespace).items:
            owners = (rs.metadata and rs.metadata.owner_references) or []
            if any(o.uid == uid for o in owners):
                return rs
        return None

    rs = wait_for(owned_replicaset, 30, "the deployment controller to create a ReplicaSet")
    assert rs.spec is not None and rs.spec.replicas == 1


def test_garbage_collector_deletes_dependents(
    kube_api_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    m = k8s_client
    core = m.CoreV1Api(kube_api_client)
    owner = core.create_namespaced_config_map(
        kube_namespace, m.V1ConfigMap(metadata=m.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    assert owner.metadata is not None and owner.metadata.uid is not None
    core.create_namespaced_config_map(
        kube_namespace,
        m.V1ConfigMap(
            metadata=m.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    m.V1OwnerReference(
                        api_version="v1",
                        kind="ConfigMap",
                        name="owner",
                        uid=owner.metadata.uid,
                        block_owner_deletion=True,
                    )
                ],
            )
        ),
    )
    core.delete_namespaced_config_map("owner", kube_namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", kube_namespace)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    wait_for(dependent_gone, 30, "the garbage collector to delete the dependent ConfigMap")


# -- the Pipeline CRD -----------------------------------------------------------------------


def test_crd_installs(pipeline_crd: dict[str, Any]) -> None:
    assert pipeline_crd["spec"]["names"]["kind"] == "Pipeline"
    conditions = {c["type"]: c for c in pipeline_crd["status"]["conditions"]}
    assert conditions["NamesAccepted"]["status"] == "True"


def test_kubectl_explain_shows_step_fields(
    pipeline_crd: dict[str, Any], kube_control_plane: KubeControlPlane
) -> None:
    # The OpenAPI document is republished asynchronously after the CRD is Established.
    def explain() -> str | None:
        try:
            return kube_control_plane.kubectl("explain", "pipeline.spec.steps")
        except subprocess.CalledProcessError:
            return None

    out = wait_for(explain, 30, "kubectl explain pipeline.spec.steps")
    assert "Processing stages." in out
    # Each field is listed as "name <type>" with its description on the next line.
    assert re.search(r"^ +from\s+<string> -required-\n +Input topic; must be declared", out, re.M)
    assert re.search(r"^ +window\s+<Object>\n +Time windows; needs keyBy", out, re.M)


def test_valid_pipeline_is_accepted(
    pipeline_crd: dict[str, Any], kube_api_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    created = create_pipeline(kube_api_client, kube_namespace, pipeline("trip-metrics"))
    assert created["metadata"]["name"] == "trip-metrics"
    assert created["spec"]["steps"][0]["aggregate"]["trips"] == "count"


def _no_sources(spec: dict[str, Any]) -> None:
    del spec["sources"]


def _window_type_defaulted(spec: dict[str, Any]) -> None:
    del spec["steps"][0]["window"]["type"]


def _only_max_replicas(spec: dict[str, Any]) -> None:
    spec["steps"][0]["autoscaling"] = {"maxReplicas": 4}


@pytest.mark.parametrize(
    "mutate",
    [_no_sources, _window_type_defaulted, _only_max_replicas],
    ids=["no-sources", "window-type-defaulted", "only-maxReplicas"],
)
def test_optional_fields_may_be_left_out(
    pipeline_crd: dict[str, Any],
    kube_api_client: k8s_client.ApiClient,
    kube_namespace: str,
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    create_pipeline(kube_api_client, kube_namespace, pipeline("optional", mutate))


def _set_step(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["steps"][0].update(fields)

    return mutate


def _set_window(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["steps"][0]["window"].update(fields)

    return mutate


def _step_autoscaling_inverted(spec: dict[str, Any]) -> None:
    spec["steps"][0]["autoscaling"].update(minReplicas=5, maxReplicas=2)


def _api_autoscaling_inverted(spec: dict[str, Any]) -> None:
    spec["api"]["autoscaling"].update(minReplicas=5, maxReplicas=2)


def _validate_dead_letter_undeclared(spec: dict[str, Any]) -> None:
    spec["steps"][0]["validate"]["deadLetter"] = "nope"


def _two_source_kinds(spec: dict[str, Any]) -> None:
    spec["sources"][0]["generator"] = {"fields": {"n": {"type": "int"}}}


def _emit_without_redis(spec: dict[str, Any]) -> None:
    spec["steps"][0]["sink"] = {"kafka": {"topic": spec["topics"][0]["name"], "emit": "final"}}


def _timestamp_on_events(spec: dict[str, Any]) -> None:
    spec["steps"][0]["sink"] = {"kafka": {"topic": spec["topics"][0]["name"], "timestamp": "end"}}


def _duplicate_topic(spec: dict[str, Any]) -> None:
    spec["topics"].append({"name": "trips", "partitions": 2})


# (mutation, what the apiserver's message must contain: the offending field path first)
INVALID = {
    "from-undeclared-topic": (
        _set_step(**{"from": "nope"}),
        ["spec.steps:", "spec.steps[].from must name a topic declared in spec.topics"],
    ),
    "deadLetter-undeclared-topic": (
        _set_step(deadLetter="nope"),
        ["spec.steps:", "spec.steps[].deadLetter must name a topic"],
    ),
    "step-maxReplicas-below-min": (
        _step_autoscaling_inverted,
        ["spec.steps[0].autoscaling.maxReplicas:", "maxReplicas must be >= minReplicas"],
    ),
    "api-maxReplicas-below-min": (
        _api_autoscaling_inverted,
        ["spec.api.autoscaling.maxReplicas:", "maxReplicas must be >= minReplicas"],
    ),
    "bad-duration": (
        _set_window(size="1minute"),
        ["spec.steps[0].window.size:", '"1minute"', "should match"],
    ),
    # Aggregate values are free-form in the CRD (see docs/design.md); their shape is
    # checked by the spec models, which test_spec.py covers.
    "validate-deadLetter-undeclared-topic": (
        _validate_dead_letter_undeclared,
        ["spec.steps:", "spec.steps[].validate.deadLetter must name a topic"],
    ),
    "source-with-two-kinds": (
        _two_source_kinds,
        ["spec.sources[0]:", "a source sets exactly one of"],
    ),
    "hopping-without-advance": (
        _set_window(type="hopping"),
        ["spec.steps[0].window.advance:", "a hopping window needs advance"],
    ),
    "emit-windows-without-redis": (
        _emit_without_redis,
        ["spec.steps[0].sink:", "sink.kafka.emit updates or final needs a window and a redis"],
    ),
    "window-timestamp-on-events": (
        _timestamp_on_events,
        ["spec.steps[0].sink.kafka.timestamp:", "sink.kafka.timestamp stamps window records"],
    ),
    "duplicate-topic": (
        _duplicate_topic,
        ["spec.topics[2]: Duplicate value"],
    ),
}


@pytest.mark.parametrize(("mutate", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_pipeline_is_rejected(
    pipeline_crd: dict[str, Any],
    kube_api_client: k8s_client.ApiClient,
    kube_namespace: str,
    mutate: Callable[[dict[str, Any]], None],
    expected: list[str],
) -> None:
    with pytest.raises(ApiException) as caught:
        create_pipeline(kube_api_client, kube_namespace, pipeline("invalid", mutate))
    message = error_message(caught.value)
    assert caught.value.status == 422, message
    for fragment in expected:
        assert fragment in message, message


# -- helm -----------------------------------------------------------------------------------


def test_helm_version(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(find_binary("helm")), "version"],
        capture_output=True,
        text=True,
        timeout=60,
        # Keep helm away from the user's own config and cache.
        env={
            "HOME": str(tmp_path),
            "HELM_CACHE_HOME": str(tmp_path / "cache"),
            "HELM_CONFIG_HOME": str(tmp_path / "config"),
            "HELM_DATA_HOME": str(tmp_path / "data"),
        },
    )
    assert result.returncode == 0, result.stderr
    assert 'Version:"v3.16.4"' in result.stdout, result.stdout
