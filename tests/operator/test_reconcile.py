"""The operator against the real kube-apiserver and kube-controller-manager.

Pods never run here (no container runtime), so where a test needs running pods or
Strimzi's topic operator it says so and uses the stand-ins in helpers.py, which write
status through the apiserver the way a kubelet or Strimzi would.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from flowmill.manifest import parse_pipeline
from flowmill_operator import naming
from flowmill_operator.render import Manifest, render
from flowmill_operator.runner import OperatorThread
from flowmill_operator.status import parse_quantity
from tests.harness.kube import KubeControlPlane
from tests.harness.waiting import wait_for
from tests.operator.fixtures import TEST_IMAGE, TEST_RENDER
from tests.operator.helpers import (
    CHILDREN_TIMEOUT,
    Cluster,
    example_files,
    for_namespace,
    pipeline_documents,
)

SKETCH = example_files()[0]
FULL = example_files()[1]
# The session's CRDs include PodMonitor, so the operator (pod monitors: auto) adds one.
EXPECTED_SETTINGS = TEST_RENDER.model_copy(update={"pod_monitor": True})

EXAMPLES = [(path, document) for path in example_files() for document in pipeline_documents(path)]


def expected(body: dict[str, Any], uid: str | None = None) -> list[Manifest]:
    return render(parse_pipeline(body), EXPECTED_SETTINGS, uid=uid).manifests


def keys(manifests: list[Manifest]) -> set[tuple[str, str, str]]:
    return {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in manifests}


def live_children(cluster: Cluster, body: dict[str, Any]) -> set[tuple[str, str, str]]:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    found = cluster.children(namespace, name)
    kafka_ns = (body["spec"].get("kafka") or {}).get("namespace")
    if kafka_ns and kafka_ns != namespace:
        found |= cluster.children(kafka_ns, name)
    return found


def create_and_wait(cluster: Cluster, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Create the Pipeline; return it and the seconds until every child existed."""
    want = keys(expected(body))
    started = time.monotonic()
    created = cluster.create_pipeline(body)
    wait_for(
        lambda: want <= live_children(cluster, body),
        CHILDREN_TIMEOUT,
        f"children of {body['metadata']['name']}",
        interval=0.02,
    )
    return created, time.monotonic() - started


def contains(want: Any, got: Any, path: str = "") -> list[str]:
    """Where the live object lacks what was rendered (the server adds defaults, and
    canonicalises quantities such as 5000 -> 5k)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected a mapping, got {got!r}"]
        return [d for k, v in want.items() for d in contains(v, got.get(k), f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: expected {want!r}, got {got!r}"]
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=True))
            for d in contains(w, g, f"{path}[{i}]")
        ]
    if want == got:
        return []
    if isinstance(want, str) and isinstance(got, str):
        a, b = parse_quantity(want), parse_quantity(got)
        if a is not None and a == b:
            return []
    return [f"{path}: expected {want!r}, got {got!r}"]


def read(cluster: Cluster, manifest: Manifest) -> dict[str, Any]:
    group_version, kind = manifest["apiVersion"], manifest["kind"]
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    readers = {
        "ConfigMap": lambda: cluster.core.read_namespaced_config_map(name, ns),
        "Service": lambda: cluster.core.read_namespaced_service(name, ns),
        "Deployment": lambda: cluster.apps.read_namespaced_deployment(name, ns),
        "HorizontalPodAutoscaler": lambda: (
            cluster.autoscaling.read_namespaced_horizontal_pod_autoscaler(name, ns)
        ),
    }
    if kind in readers:
        return dict(cluster.api.sanitize_for_serialization(readers[kind]()))
    group, version = group_version.split("/")
    plural = kind.lower() + "s"
    return dict(cluster.custom.get_namespaced_custom_object(group, version, ns, plural, name))


def service_accounts(body: dict[str, Any]) -> set[str]:
    """Every serviceAccountName the Pipeline's pod templates name."""
    spec = body["spec"]
    parts = [spec, *spec.get("sources", []), *spec.get("steps", []), spec.get("api", {})]
    return {
        p["template"]["serviceAccountName"]
        for p in parts
        if "serviceAccountName" in (p.get("template") or {})
    }


def make_ready(cluster: Cluster, body: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
    """Play Strimzi and the kubelet until the Pipeline reports Ready. Looping matters:
    the HPA controller scales the API up to its minReplicas a few seconds in, and the new
    pod needs a (stand-in) kubelet too."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    topic_ns = (body["spec"].get("kafka") or {}).get("namespace") or namespace

    def ready() -> dict[str, Any] | None:
        cluster.act_as_strimzi(topic_ns, name)
        cluster.act_as_kubelet(namespace, name)
        found = cluster.condition(namespace, name, "Ready")
        return found if found and found["status"] == "True" else None

    return wait_for(ready, timeout, f"Pipeline {namespace}/{name} to become Ready", interval=0.5)


@pytest.mark.parametrize(
    ("path", "document"),
    EXAMPLES,
    ids=[f"{p.stem}-{d['metadata']['name']}" for p, d in EXAMPLES],
)
def test_example_pipeline_gets_every_child_then_becomes_ready(
    path: Any,
    document: dict[str, Any],
    op_namespace: str,
    cluster: Cluster,
    operator_crds: KubeControlPlane,
    record_property: Any,
) -> None:
    kafka_ns = f"{op_namespace}-kafka"
    cluster.create_namespace(kafka_ns)
    body = for_namespace(document, op_namespace, kafka_ns)
    # The ReplicaSet controller creates no pod whose ServiceAccount is missing: a pod
    # template naming one needs it to exist, as on any cluster.
    for account in service_accounts(body):
        cluster.core.create_namespaced_service_account(
            op_namespace, {"metadata": {"name": account}}
        )
    created, seconds = create_and_wait(cluster, body)
    record_property("children_seconds", round(seconds, 3))
    print(f"\n[operator] {path.name}: all children seen by the test after {seconds:.2f}s")
    # A bound against a stuck reconcile, not a speed target (that figure is the benchmark's):
    # generous because the suite shares two cores with its other workers.
    assert seconds < 60, f"children took {seconds:.1f}s"

    # Exactly the rendered children, with the rendered content and owner references.
    want = expected(body, uid=created["metadata"]["uid"])
    assert live_children(cluster, body) == keys(want)
    for manifest in want:
        diff = contains(manifest, read(cluster, manifest))
        assert not diff, f"{manifest['kind']} {manifest['metadata']['name']}: {diff[:5]}"

    # Without pods and without Strimzi, Ready is False for a reason that says so.
    name = body["metadata"]["name"]
    workers = cluster.wait_condition(op_namespace, name, "WorkersReady", "False")
    assert workers["reason"] == "WorkersPending"
    if body["spec"].get("kafka", {}).get("cluster"):
        topics = cluster.wait_condition(op_namespace, name, "TopicsReady", "False")
        assert topics["reason"] == "TopicsPending" and "Strimzi" in topics["message"]
    status = cluster.pipeline(op_namespace, name)["status"]
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["stepsReady"] == f"0/{len(body['spec'].get('steps', []))}"
    degraded = cluster.condition(op_namespace, name, "Degraded")
    assert degraded is not None and degraded["status"] == "False", degraded

    # Once topics and pods report ready, so does the Pipeline.
    ready = make_ready(cluster, body)
    assert ready["reason"] == "AllReady"
    status = cluster.pipeline(op_namespace, name)["status"]
    steps = len(body["spec"].get("steps", []))
    assert status["stepsReady"] == f"{steps}/{steps}"
    if body["spec"].get("api", {}).get("enabled", True):
        assert status["endpoint"] == f"http://{name}-api.{op_namespace}.svc:8000"

    table = operator_crds.kubectl("get", "pipelines", "-n", op_namespace)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "PHASE", "STEPS", "LAG", "TABLES", "AGE"]
    assert re.match(rf"^{name}\s+True\s+Running\s+{steps}/{steps}\s+", row), table
    reasons = {e["reason"] for e in cluster.events(op_namespace, name)}
    assert {"Applied", "Ready"} <= reasons, reasons


def test_children_exist_within_seconds(
    operator_crds: KubeControlPlane, cluster: Cluster, record_property: Any
) -> None:
    """Pipeline applied -> all children exist, measured by the operator itself (when the
    apiserver confirmed its last apply for the Pipeline), with production settings
    (30 s resync), 10 Pipelines in a namespace it already watches.

    The design's p99 <= 2 s is a benchmark target, and timed tests must not assert
    benchmarks (other suites share these CPUs: one CI run saw 11.8 s once); this asserts
    the suite's bound for an operator reaction and reports the numbers (pytest --junitxml
    keeps them as properties; `make bench` measures p50/p99 over 50 Pipelines).
    """
    import secrets

    from tests.operator.fixtures import delete_pipelines, operator_settings

    namespace = f"fmlat-{secrets.token_hex(4)}"
    cluster.create_namespace(namespace)
    done: dict[str, float] = {}

    async def record(manifest: Manifest) -> None:
        done[manifest["metadata"]["labels"][naming.PIPELINE_LABEL]] = time.monotonic()

    assert operator_crds.kubeconfig is not None
    settings = operator_settings(operator_crds.kubeconfig, (namespace,), resync_seconds=30.0)
    timings = []
    with OperatorThread(settings, after_apply=record):
        for i in range(10):
            body = for_namespace(_spec(SKETCH), namespace)
            name = body["metadata"]["name"] = f"latency-{i}"
            want = keys(expected(body))
            started = time.monotonic()
            cluster.create_pipeline(body)
            wait_for(
                lambda: want <= live_children(cluster, body),  # noqa: B023
                CHILDREN_TIMEOUT,
                f"children of {name}",
            )
            timings.append(done[name] - started)
        delete_pipelines(cluster, namespace)
    print("\n[operator] Pipeline applied -> all children exist:", [round(t, 2) for t in timings])
    timings.sort()
    record_property("children_seconds_p50", round(timings[4], 3))
    record_property("children_seconds_max", round(timings[-1], 3))
    assert timings[-1] < CHILDREN_TIMEOUT, timings


def _spec(path: Any) -> dict[str, Any]:
    (document,) = pipeline_documents(path)
    return document


def test_update_changes_children_and_rolls_pods(op_namespace: str, cluster: Cluster) -> None:
    body = for_namespace(_spec(SKETCH), op_namespace)
    name = body["metadata"]["name"]
    create_and_wait(cluster, body)
    step = naming.step_deployment(name, "by-region")
    before = cluster.deployment(op_namespace, step)
    hash_before = before["spec"]["template"]["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION]
    wait_for(
        lambda: (
            cluster.apps.list_namespaced_replica_set(
                op_namespace, label_selector="flowmill.dev/step=by-region"
            ).items
        ),
        CHILDREN_TIMEOUT,
        "the first ReplicaSet",
    )

    spec = copy.deepcopy(body["spec"])
    spec["topics"][0]["partitions"] = 12  # trips: 6 -> 12
    spec["steps"][0]["window"]["size"] = "2m"  # a window change
    spec["steps"][0]["autoscaling"]["maxReplicas"] = 20  # capped at 12 partitions
    added = copy.deepcopy(spec["steps"][0])
    added.update(name="by-region-hourly", sink={"redis": {"table": "region_hourly"}})
    added["window"]["size"] = "1h"
    spec["steps"].append(added)  # a new step
    cluster.patch_pipeline(op_namespace, name, spec)

    # The operator applies a reconcile's children concurrently and writes the status of
    # the generation after all of them: read the children once it has.
    def reconciled() -> dict[str, Any] | None:
        status = cluster.pipeline(op_namespace, name).get("status") or {}
        return (
            status
            if status.get("observedGeneration") == 2 and len(status.get("steps", [])) == 2
            else None
        )

    status = wait_for(reconciled, CHILDREN_TIMEOUT, "status of generation 2")

    hourly = naming.step_deployment(name, "by-region-hourly")
    wait_for(
        lambda: cluster.deployment(op_namespace, hourly),
        CHILDREN_TIMEOUT,
        "the new step's Deployment",
    )
    wait_for(lambda: cluster.hpa(op_namespace, hourly), CHILDREN_TIMEOUT, "the new step's HPA")
    topic = wait_for(
        lambda: (
            (t := cluster.topic(op_namespace, naming.kafka_topic_resource(name, "trips")))["spec"][
                "partitions"
            ]
            == 12
            and t
        ),
        CHILDREN_TIMEOUT,
        "the KafkaTopic to get 12 partitions",
    )
    assert topic["spec"]["topicName"] == "trips"
    assert cluster.hpa(op_namespace, step)["spec"]["maxReplicas"] == 12

    after = cluster.deployment(op_namespace, step)
    hash_after = after["spec"]["template"]["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION]
    assert hash_after != hash_before
    config = cluster.core.read_namespaced_config_map(naming.config_map(name), op_namespace)
    assert (
        parse_pipeline(__import__("yaml").safe_load(config.data["pipeline.yaml"]))
        .spec.steps[0]
        .window.size
        == "2m"
    )
    # The Deployment controller rolls a new ReplicaSet for the new template.
    wait_for(
        lambda: (
            len(
                {
                    rs.metadata.labels["pod-template-hash"]
                    for rs in cluster.apps.list_namespaced_replica_set(
                        op_namespace, label_selector="flowmill.dev/step=by-region"
                    ).items
                }
            )
            == 2
        ),
        CHILDREN_TIMEOUT,
        "a second ReplicaSet for the changed pod template",
    )

    by_step = {s["name"]: s for s in status["steps"]}
    assert by_step["by-region"]["maxReplicas"] == 12
    assert "capped at the 12 partitions" in by_step["by-region"]["message"]
    assert status["stepsReady"] == "0/2"


def test_removing_a_step_removes_its_deployment_and_hpa(
    op_namespace: str, cluster: Cluster
) -> None:
    body = for_namespace(_spec(SKETCH), op_namespace)
    name = body["metadata"]["name"]
    extra = copy.deepcopy(body["spec"]["steps"][0])
    extra.update(name="second", sink={"redis": {"table": "second"}})
    body["spec"]["steps"].append(extra)
    create_and_wait(cluster, body)
    second = naming.step_deployment(name, "second")
    assert cluster.hpa(op_namespace, second)

    spec = copy.deepcopy(body["spec"])
    spec["steps"] = spec["steps"][:1]
    spec["steps"][0]["autoscaling"]["kind"] = "keda"  # and swap one HPA for KEDA
    cluster.patch_pipeline(op_namespace, name, spec)

    want = keys(expected({**body, "spec": spec}))
    wait_for(lambda: live_children(cluster, body) == want, CHILDREN_TIMEOUT, "pruned children")
    assert ("Deployment", op_namespace, second) not in live_children(cluster, body)
    first = naming.step_deployment(name, "by-region")
    assert ("ScaledObject", op_namespace, first) in want
    assert ("HorizontalPodAutoscaler", op_namespace, first) not in live_children(cluster, body)
    wait_for(
        lambda: any(
            e["reason"] == "Pruned" and second in e["message"]
            for e in cluster.events(op_namespace, name)
        ),
        CHILDREN_TIMEOUT,
        "a Pruned event",
    )


def test_drift_is_corrected_but_the_hpa_is_not_fought(
    op_namespace: str, cluster: Cluster, operator_crds: KubeControlPlane
) -> None:
    body = for_namespace(_spec(SKETCH), op_namespace)
    name = body["metadata"]["name"]
    create_and_wait(cluster, body)
    step = naming.step_deployment(name, "by-region")
    source = naming.source_deployment(name, "replay")
    ns = ["-n", op_namespace]

    # A deleted child comes back (a new object, so a new uid).
    uid = cluster.deployment(op_namespace, step)["metadata"]["uid"]
    operator_crds.kubectl("delete", "deployment", step, *ns, "--wait=false")
    wait_for(
        lambda: cluster.deployment(op_namespace, step)["metadata"]["uid"] != uid,
        CHILDREN_TIMEOUT,
        "the deleted Deployment to be recreated",
    )
    wait_for(
        lambda: any(
            e["reason"] == "DriftCorrected" and step in e["message"]
            for e in cluster.events(op_namespace, name)
        ),
        CHILDREN_TIMEOUT,
        "a DriftCorrected event",
    )

    # A hand edit of a field the operator owns is taken back.
    operator_crds.kubectl("set", "image", f"deployment/{step}", "worker=evil:1", *ns)
    wait_for(
        lambda: (
            cluster.deployment(op_namespace, step)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == TEST_IMAGE
        ),
        CHILDREN_TIMEOUT,
        "the image to be restored",
    )

    # Replicas of an autoscaled step belong to its HPA: a hand scale within the HPA's
    # range stays. Replicas of a fixed-size source belong to the operator: restored.
    operator_crds.kubectl("scale", f"deployment/{step}", "--replicas=3", *ns)
    operator_crds.kubectl("scale", f"deployment/{source}", "--replicas=4", *ns)
    wait_for(
        lambda: cluster.deployment(op_namespace, source)["spec"]["replicas"] == 1,
        CHILDREN_TIMEOUT,
        "the source's replicas to be restored",
    )
    # Another full reconcile after both scales: delete the ConfigMap and see it return.
    operator_crds.kubectl("delete", "configmap", naming.config_map(name), *ns, "--wait=false")
    wait_for(
        lambda: cluster.core.read_namespaced_config_map(naming.config_map(name), op_namespace),
        CHILDREN_TIMEOUT,
        "the ConfigMap to return",
    )
    assert cluster.deployment(op_namespace, step)["spec"]["replicas"] == 3
    managers = {
        f["manager"]
        for f in cluster.deployment(op_namespace, step)["metadata"]["managedFields"]
        if "f:replicas" in str(f.get("fieldsV1", {}).get("f:spec", {}))
    }
    assert naming.MANAGER not in managers, managers


def test_invalid_spec_is_reported_on_its_field_with_no_children(
    op_namespace: str, cluster: Cluster
) -> None:
    body = for_namespace(_spec(SKETCH), op_namespace)
    name = body["metadata"]["name"]
    # Aggregates are free-form in the CRD, so this passes the apiserver; the models catch it.
    body["spec"]["steps"][0]["aggregate"]["trips"] = {"median": "fare"}
    cluster.create_pipeline(body)
    ready = cluster.wait_condition(op_namespace, name, "Ready", "False")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.steps[0].aggregate.trips" in ready["message"]
    degraded = cluster.condition(op_namespace, name, "Degraded")
    assert degraded and degraded["status"] == "True"
    time.sleep(1.5)  # a resync later, still nothing
    assert not live_children(cluster, body)
    wait_for(
        lambda: any(
            e["type"] == "Warning" and "spec.steps[0].aggregate.trips" in e["message"]
            for e in cluster.events(op_namespace, name)
        ),
        CHILDREN_TIMEOUT,
        "a Warning event naming the field",
    )

    spec = copy.deepcopy(body["spec"])
    spec["steps"][0]["aggregate"]["trips"] = "count"
    cluster.patch_pipeline(op_namespace, name, spec)
    wait_for(
        lambda: keys(expected(body | {"spec": spec})) <= live_children(cluster, body),
        CHILDREN_TIMEOUT,
        "children once fixed",
    )
    cluster.wait_condition(op_namespace, name, "Degraded", "False")


def test_operator_restarted_mid_reconcile_converges_without_duplicates(
    operator_crds: KubeControlPlane, cluster: Cluster
) -> None:
    import asyncio
    import secrets
    import threading

    from tests.operator.fixtures import delete_pipelines, operator_settings

    namespace = f"fmrs-{secrets.token_hex(4)}"
    kafka_ns = f"{namespace}-kafka"
    cluster.create_namespace(namespace)
    cluster.create_namespace(kafka_ns)
    body = for_namespace(_spec(FULL), namespace, kafka_ns)
    want = keys(expected(body))
    applied: list[str] = []
    stuck = threading.Event()

    async def hang_after_four(manifest: Manifest) -> None:
        applied.append(manifest["metadata"]["name"])
        if len(applied) >= 4:
            stuck.set()
            await asyncio.Event().wait()  # "killed" here, children half applied

    assert operator_crds.kubeconfig is not None
    settings = operator_settings(operator_crds.kubeconfig, (namespace, kafka_ns))
    first = OperatorThread(settings, after_apply=hang_after_four).start()
    try:
        cluster.create_pipeline(body)
        assert stuck.wait(10), "the first operator never got mid-way"
    finally:
        first.stop()
    partial = live_children(cluster, body)
    assert 4 <= len(partial) < len(want), f"{len(partial)} of {len(want)} children before restart"

    second = OperatorThread(settings).start()
    try:
        wait_for(
            lambda: live_children(cluster, body) == want,
            CHILDREN_TIMEOUT,
            "convergence after restart",
        )
        pipeline = cluster.pipeline(namespace, body["metadata"]["name"])
        assert pipeline["metadata"]["finalizers"] == ["flowmill.dev/finalizer"]
        for kind, ns, child in want:
            if kind == "Deployment":
                owners = cluster.deployment(ns, child)["metadata"]["ownerReferences"]
                assert len(owners) == 1 and owners[0]["uid"] == pipeline["metadata"]["uid"]
        cluster.wait_condition(namespace, body["metadata"]["name"], "WorkersReady", "False")
        delete_pipelines(cluster, namespace)
    finally:
        second.stop()


def test_flowmill_operator_command_serves_liveness_and_reconciles(
    operator_crds: KubeControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    """The real `flowmill operator` process, configured by flags as the chart does."""
    import os
    import secrets
    import signal
    import subprocess
    import sys
    import urllib.request

    from flowmill.local.ports import free_port
    from tests.operator.fixtures import delete_pipelines

    namespace = f"fmcli-{secrets.token_hex(4)}"
    cluster.create_namespace(namespace)
    port = free_port()
    log = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMILL_")}
    env["FLOWMILL_RESYNC_SECONDS"] = "2"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "flowmill.cli", "operator",
                "--kubeconfig", str(operator_crds.kubeconfig), "-n", namespace,
                "--liveness", f"http://127.0.0.1:{port}/healthz",
                "--image", TEST_IMAGE, "--default-kafka-cluster", "events",
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:

        def healthy() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 90, "the operator's liveness endpoint", interval=0.2)
        body = for_namespace(_spec(SKETCH), namespace)
        cluster.create_pipeline(body)
        wait_for(
            lambda: keys(expected(body)) <= live_children(cluster, body),
            CHILDREN_TIMEOUT,
            "children from the flowmill operator process",
        )
        delete_pipelines(cluster, namespace)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # 30 s was once too short in CI on two loaded cores.
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                "the operator did not stop within 60 s of SIGTERM:\n" + log.read_text()[-3000:]
            ) from None
    assert code == 0, log.read_text()[-3000:]


# Last in the module: by now the garbage collector has usually discovered Pipelines.
def test_delete_collects_children_and_cross_namespace_topics(
    op_namespace: str, cluster: Cluster, garbage_collector_knows_pipelines: None
) -> None:
    kafka_ns = f"{op_namespace}-kafka"
    cluster.create_namespace(kafka_ns)
    body = for_namespace(_spec(FULL), op_namespace, kafka_ns)
    name = body["metadata"]["name"]
    create_and_wait(cluster, body)
    assert cluster.children(kafka_ns, name), "topics live in the Kafka namespace"

    cluster.delete_pipeline(op_namespace, name)

    def pipeline_gone() -> bool:
        try:
            cluster.pipeline(op_namespace, name)
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(pipeline_gone, CHILDREN_TIMEOUT, "the finalizer to release the Pipeline")
    # The finalizer deleted the topics elsewhere; the garbage collector the rest.
    wait_for(
        lambda: not cluster.children(kafka_ns, name),
        CHILDREN_TIMEOUT,
        "cross-namespace KafkaTopics to go",
    )
    wait_for(
        lambda: not cluster.children(op_namespace, name),
        CHILDREN_TIMEOUT,
        "garbage collection of children",
    )


def test_replay_holds_the_step_at_zero_runs_the_reset_job_then_scales_back(
    op_namespace: str, cluster: Cluster
) -> None:
    """spec.replay on a running Pipeline: the step's Deployment goes to 0 and its HPA away
    while the reset Job (the real Job controller's pod, finished by the stand-in kubelet)
    runs, status says Replaying; once the Job completed, the step is rendered as before
    (HPA back, Deployment scaled up by it), the Job is pruned, status.replay Succeeded
    and a Replayed Event. The same id again does nothing; a failed Job's outcome is
    checked in test_status (the controller's retry backoff would cost this test 30 s)."""
    body = for_namespace(_spec(SKETCH), op_namespace)
    name = body["metadata"]["name"]
    create_and_wait(cluster, body)
    make_ready(cluster, body)
    step = naming.step_deployment(name, "by-region")
    job = naming.replay_job(name, "by-region", "r1")
    spec = copy.deepcopy(body["spec"])
    spec["replay"] = {"id": "r1", "step": "by-region", "fromOffset": 0}
    cluster.patch_pipeline(op_namespace, name, spec)

    def holding() -> bool:
        found = live_children(cluster, body)
        replay = (cluster.pipeline(op_namespace, name).get("status") or {}).get("replay") or {}
        return (
            ("Job", op_namespace, job) in found
            and ("HorizontalPodAutoscaler", op_namespace, step) not in found
            and cluster.deployment(op_namespace, step)["spec"]["replicas"] == 0
            and replay.get("phase") == "Replaying"
        )

    wait_for(holding, CHILDREN_TIMEOUT, "the step held at zero and the reset Job")
    assert cluster.pipeline(op_namespace, name)["status"]["phase"] == "Replaying"
    # Bounds as generous as the others here: the Job controller, the operator's next
    # reconcile and the HPA controller each take their turn on two busy cores.
    wait_for(
        lambda: cluster.finish_job_pods(op_namespace, job, 0), CHILDREN_TIMEOUT, "the Job's pod"
    )

    def scaled_back() -> dict[str, Any] | None:
        status = cluster.pipeline(op_namespace, name).get("status") or {}
        found = live_children(cluster, body)
        done = (
            (status.get("replay") or {}).get("phase") == "Succeeded"
            and status.get("phase") == "Running"
            and ("Job", op_namespace, job) not in found
            and ("HorizontalPodAutoscaler", op_namespace, step) in found
        )
        return status if done else None

    status = wait_for(
        scaled_back, CHILDREN_TIMEOUT, "the replay to finish and the step to come back"
    )
    assert status["replay"] == {
        "id": "r1",
        "step": "by-region",
        "phase": "Succeeded",
        "job": job,
        "message": "positions and table reset",
    }
    assert live_children(cluster, body) == keys(expected({**body, "spec": body["spec"]}))
    wait_for(
        lambda: cluster.deployment(op_namespace, step)["spec"].get("replicas", 0) >= 1,
        CHILDREN_TIMEOUT,
        "the HPA to scale the step back up",
    )
    assert any(e["reason"] == "Replayed" for e in cluster.events(op_namespace, name))
