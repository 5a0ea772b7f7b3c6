"""StreamPulse on the real node, from `kubectl apply` of its cluster variant to deletion:

- the operator creates the topics through the Kafka admin API, the source, step and API pods
  run (admitted under `restricted`, read-only root filesystems), and the windows read
  through the API's Service equal the values tests/examples/expected.py computes;
- the step's pod, force-deleted mid-stream, is replaced by its Deployment and the windows
  stay exact; the API's health view (GET /pipelines/{p}/health through its Service, from
  the session's Prometheus and Kafka) draws every node, counts the pod gone and shows the
  dead letters with their reasons;
- a spec edit (a new step with a new aggregate) rolls every pod and the new aggregate
  appears;
- spec.replay of by-region from offset 0: the reset Job succeeds and the windows are the
  same and exact again;
- deleting the Pipeline removes its pods, Services, HPAs and the topics the operator created.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s_client

from flowmill_operator import naming
from flowmill_operator.reconcile import created_topics
from tests.cluster.examples import (
    ClusterExample,
    api_client_for,
    apply,
    assert_restricted,
    child_pods,
    kafka_topics,
    kubectl,
    load,
    read_pipeline,
    time_to_answer,
    wait_running,
)
from tests.cluster.release import EXAMPLE_NAMESPACES, Release, describe_pods, pod_ready
from tests.examples.expected import streampulse_accepted, streampulse_windows
from tests.examples.harness import read_topic, source, step, topic, wait_matching
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.node

NAMESPACE = EXAMPLE_NAMESPACES[0]
ROWS = 2000
# Slow enough that the step's pod is deleted while the replay is still going (~40 s), on
# a loaded machine too.
RATE = 50
# The source, by-region, its hourly rollup (by-region-hour) and the API.
DEPLOYMENTS = 4


def served_windows(http: Any, base: str, regions: list[str]) -> dict[Any, dict[str, Any]]:
    found: dict[Any, dict[str, Any]] = {}
    for region in regions:
        page = http.get(f"{base}/keys/{region}/windows", params={"limit": 1000})
        if page.status_code == 404:
            continue
        page.raise_for_status()
        for w in page.json()["windows"]:
            found[(region, w["start"])] = w["values"]
    return found


def min_fare_step(by_region: dict[str, Any]) -> dict[str, Any]:
    """The edit: a second window step, like by-region, with a new aggregate (min_fare)."""
    new = copy.deepcopy(by_region)
    new["name"] = "min-fare"
    new["aggregate"] = {"trips": "count", "min_fare": {"min": "fare"}}
    new["sink"] = {"redis": {"table": "region_min_fare", "ttl": "7d"}}
    new.pop("autoscaling", None)
    return new


def test_streampulse_on_the_cluster(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    flowmill_release: Release,
    metrics_stack: MetricsStack,
    tmp_path: Path,
) -> None:
    assert kube_node.images is not None and kube_node.kafka is not None
    bootstrap = kube_node.kafka.bootstrap_servers
    core = k8s_client.CoreV1Api(node_api_client)

    def slower(doc: dict[str, Any]) -> None:
        source(doc, "replay")["fileReplay"]["rate"] = RATE

    example = load("streampulse", NAMESPACE, tmp_path, kube_node.images.flowmill, slower)
    trip_events = topic(example.pipeline, "trip-events")
    apply(kube_node, example)

    # -- a step pod force-deleted mid-stream ---------------------------------------------
    step_selector = f"{naming.STEP_LABEL}=by-region,{naming.PIPELINE_LABEL}={example.pipeline_name}"
    regions = [str(r) for r in range(1, 7)]
    base = example.table_path("region_metrics")

    def consuming() -> k8s_client.V1Pod | None:
        """The step's pod once it has written a window, so it is mid-stream."""
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=step_selector).items
        if len(pods) != 1 or not pod_ready(pods[0]):
            return None
        with api_client_for(core, example) as http:
            try:
                return pods[0] if served_windows(http, base, regions) else None
            except (httpx.HTTPError, ValueError):
                return None

    try:
        victim = wait_for(consuming, 180, "the step writing its first windows")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{describe_pods(core, NAMESPACE)}") from None
    # Scraped before it goes, so the health view can count it gone.
    wait_for(
        lambda: metrics_stack.value(
            f'count(flowmill_events_out_total{{pod="{victim.metadata.name}"}})'
        ),
        60,
        f"Prometheus scraping {victim.metadata.name}",
    )
    produced = len(read_topic(bootstrap, trip_events))
    assert produced < ROWS, "the replay ended before the step's pod could be deleted"
    kubectl(
        kube_node,
        "delete",
        "pod",
        victim.metadata.name,
        "-n",
        NAMESPACE,
        "--grace-period=0",
        "--force",
    )
    print(f"[cluster] streampulse: step pod force-deleted after {produced} of {ROWS} trips")

    def replaced() -> k8s_client.V1Pod | None:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=step_selector).items
        fresh = [p for p in pods if p.metadata.uid != victim.metadata.uid and pod_ready(p)]
        return fresh[0] if fresh and len(pods) == 1 else None

    replacement = wait_for(replaced, 120, "the Deployment to replace the deleted pod")
    assert replacement.metadata.name != victim.metadata.name

    # -- every pod runs, admitted under `restricted`; the topics are the operator's -------
    pods = wait_running(node_api_client, example, DEPLOYMENTS)
    print(
        f"[cluster] streampulse: {len(pods)} pods Ready {time_to_answer(example):.1f}s after apply"
    )
    assert_restricted(node_api_client, NAMESPACE, pods)
    pipeline = read_pipeline(node_api_client, example)
    assert pipeline["status"]["topicManagement"] == "admin"
    ours = created_topics(pipeline["status"])
    assert ours == {t["name"] for t in example.pipeline["spec"]["topics"]}
    assert ours <= kafka_topics(bootstrap)

    records = wait_for(
        lambda: len(r := read_topic(bootstrap, trip_events)) == ROWS and r,
        120,
        f"all {ROWS} trips replayed",
    )
    expected, dead = streampulse_windows(records)
    # 8 invalid rows and 15 late ones, by construction of the data.
    assert len(dead) == 23
    assert sorted({region for region, _ in expected}) == regions
    with api_client_for(core, example) as http:
        wait_matching(
            "region windows after the pod was force-deleted",
            lambda: served_windows(http, base, regions),
            expected,
            exact={"trips"},
            timeout=120,
        )
        print(f"[cluster] streampulse: exact windows {time_to_answer(example):.1f}s after apply")
        top = http.get(
            f"{base}/windows/{max(s for _, s in expected)}/top", params={"by": "revenue"}
        )
        assert top.status_code == 200 and top.json()["keys"], top.text
        assert_health(http, example, len(dead))

    # -- a spec edit rolls the pods; the new aggregate appears ---------------------------
    before = {p.metadata.uid for p in child_pods(core, example)}
    old_hash = replacement.metadata.annotations[naming.SPEC_HASH_ANNOTATION]
    example.pipeline["spec"]["steps"].append(min_fare_step(step(example.pipeline, "by-region")))
    apply(kube_node, example)
    pods = wait_running(
        node_api_client,
        example,
        DEPLOYMENTS + 1,
        accept=lambda pod: pod.metadata.annotations[naming.SPEC_HASH_ANNOTATION] != old_hash,
    )
    assert not before & {p.metadata.uid for p in pods}, "a pod survived the spec edit"
    assert len({p.metadata.annotations[naming.SPEC_HASH_ANNOTATION] for p in pods}) == 1
    accepted, _ = streampulse_accepted(records)
    min_fares: dict[Any, dict[str, Any]] = {}
    for key, e in accepted:
        w = min_fares.setdefault(key, {"trips": 0, "min_fare": e["fare"]})
        w["trips"] += 1
        w["min_fare"] = min(w["min_fare"], e["fare"])
    with api_client_for(core, example) as http:
        wait_matching(
            "the new aggregate min_fare",
            lambda: served_windows(http, example.table_path("region_min_fare"), regions),
            min_fares,
            exact={"trips", "min_fare"},
            timeout=120,
        )
        # The first step's windows are untouched by the roll.
        assert not served_windows(http, base, regions).keys() ^ expected.keys()

    # -- a replay of by-region from offset 0: the operator holds the step at zero, its
    # reset Job (the step's pod, the chart's RBAC) resets positions and table, the step
    # comes back and rebuilds: the same windows, exact again -------------------------
    example.pipeline["spec"]["replay"] = {"id": "r1", "step": "by-region", "fromOffset": 0}
    apply(kube_node, example)
    started = time.monotonic()

    def replay_done() -> dict[str, Any] | None:
        status = read_pipeline(node_api_client, example).get("status") or {}
        replay = status.get("replay") or {}
        assert replay.get("phase") != "Failed", replay
        return status if replay.get("phase") == "Succeeded" else None

    try:
        wait_for(replay_done, 180, "the replay's reset Job to succeed")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{describe_pods(core, NAMESPACE)}") from None

    def exact_again(http: httpx.Client) -> bool:
        # Every answer carries the table's state (rebuilding until the step passes the
        # marks the reset set).
        answer = http.get(f"{base}/keys/{regions[0]}/windows", params={"limit": 1})
        return answer.headers.get("x-flowmill-table-state") == "exact"

    print(f"[cluster] streampulse: replay reset done {time.monotonic() - started:.1f}s after apply")

    with api_client_for(core, example) as http:
        wait_matching(
            "region windows after the replay, the table exact again",
            lambda: served_windows(http, base, regions) if exact_again(http) else {},
            expected,
            exact={"trips"},
            timeout=180,
        )
    print(f"[cluster] streampulse: exact again {time.monotonic() - started:.1f}s after the replay")

    # -- deletion removes the children and the operator's topics -------------------------
    hpas = k8s_client.AutoscalingV2Api(node_api_client)
    selector = naming.child_selector(example.pipeline_name)
    assert hpas.list_namespaced_horizontal_pod_autoscaler(NAMESPACE, label_selector=selector).items
    ours = created_topics(read_pipeline(node_api_client, example)["status"])
    kubectl(kube_node, "delete", "pipeline", example.pipeline_name, "-n", NAMESPACE, "--wait=true")
    assert_children_gone(node_api_client, example)

    def topics_gone() -> bool:
        return not ours & kafka_topics(bootstrap)

    wait_for(topics_gone, 60, f"the topics {sorted(ours)} deleted from Kafka")


def assert_health(http: Any, example: ClusterExample, dead: int) -> None:
    """The API's health view, through its Service: the graph's nodes (written out here
    from the manifest), the force-deleted pod counted gone, the dead letters' reasons."""
    names = {
        t: topic(example.pipeline, t) for t in ("trip-events", "trip-events-dlq", "region-minutes")
    }
    nodes = {
        "source/replay",
        *(f"topic/{names[t]}" for t in ("trip-events", "trip-events-dlq", "region-minutes")),
        "step/by-region",
        "sink/by-region/redis",
        "step/by-region-hour",
        "sink/by-region-hour/redis",
    }
    path = f"/pipelines/{example.pipeline_name}/health"

    def shown() -> dict[str, dict[str, Any]] | None:
        body = http.get(path).json()
        got = {n["id"]: n for n in body["nodes"]}
        step = got.get("step/by-region", {})
        ok = body["source"] == "prometheus" and step.get("state") == "ready"
        return got if ok and step.get("pods_gone") == 1 else None

    try:
        got = wait_for(shown, 60, "the health view counting the deleted step pod gone")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{http.get(path).text}") from None
    assert set(got) == nodes
    step = got["step/by-region"]
    assert step["replicas"] == step["ready_replicas"] == 1, step
    for other in ("source/replay", "step/by-region-hour"):
        assert got[other]["state"] == "ready" and got[other]["pods_gone"] == 0, got[other]
    reasons = got[f"topic/{names['trip-events-dlq']}"]["reasons"]
    assert len(reasons) == min(dead, 5) and reasons == step["reasons"]
    assert all(r["step"] == "by-region" and r["reason"] for r in reasons), reasons
    print(f"[cluster] streampulse health: {step}")


def assert_children_gone(api_client: k8s_client.ApiClient, example: ClusterExample) -> None:
    core = k8s_client.CoreV1Api(api_client)
    apps = k8s_client.AppsV1Api(api_client)
    hpas = k8s_client.AutoscalingV2Api(api_client)
    ns, selector = example.namespace, naming.child_selector(example.pipeline_name)

    def left() -> list[str]:
        return [
            *(f"pod/{p.metadata.name}" for p in child_pods(core, example)),
            *(
                f"service/{s.metadata.name}"
                for s in core.list_namespaced_service(ns, label_selector=selector).items
            ),
            *(
                f"deployment/{d.metadata.name}"
                for d in apps.list_namespaced_deployment(ns, label_selector=selector).items
            ),
            *(
                f"hpa/{h.metadata.name}"
                for h in hpas.list_namespaced_horizontal_pod_autoscaler(
                    ns, label_selector=selector
                ).items
            ),
        ]

    deadline = time.monotonic() + 90
    while (remaining := left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not remaining, f"left after the Pipeline's deletion: {remaining}"
