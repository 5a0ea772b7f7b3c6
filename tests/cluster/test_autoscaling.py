"""Autoscaling on Kafka lag, closed for real: worker pods -> Prometheus -> prometheus-adapter
-> the HPA controller -> more worker pods, on the single-node cluster.

A burst of events builds lag on a 4-partition topic; the HPA's desired replicas rise, new
pods start and join the consumer group (the partitions spread over them), the lag drains,
every output is there exactly once, and after the (short, test-configured) stabilization
window the step is back at one worker. Bounds are generous; benchmarks/autoscaling_bench.py
measures the figures.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill.spec import consumer_group
from flowmill_operator import naming
from flowmill_operator.runner import OperatorThread
from flowmill_operator.settings import OperatorSettings, RenderSettings
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for
from tests.operator.fixtures import PIPELINE_CRD
from tests.workers.harness import consume_all, produce

pytestmark = pytest.mark.node

GROUP, VERSION, PLURAL = "flowmill.dev", "v1alpha1", "pipelines"
PARTITIONS = 4
BURST = 200_000
LAG_PER_REPLICA = 2_000
SCALE_DOWN = "20s"
# A small CPU limit makes one worker slow enough that a burst outlasts the HPA's reaction.
WORKER_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "192Mi"},
    "limits": {"cpu": "200m", "memory": "256Mi"},
}


def pipeline_manifest(name: str, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "topics": [
                {"name": f"{name}-events", "partitions": PARTITIONS},
                {"name": f"{name}-tagged", "partitions": 1},
            ],
            "steps": [
                {
                    "name": "tag",
                    "from": f"{name}-events",
                    "map": {"doubled": "n * 2"},
                    "sink": {"kafka": {"topic": f"{name}-tagged"}},
                    "resources": WORKER_RESOURCES,
                    "autoscaling": {
                        "minReplicas": 1,
                        "maxReplicas": max_replicas,
                        "lagPerReplica": LAG_PER_REPLICA,
                        "scaleDownStabilization": SCALE_DOWN,
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="session")
def metrics_stack(kube_node: KubeNode) -> Iterator[MetricsStack]:
    stack = MetricsStack(kube_node)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def operator(kube_node: KubeNode, node_namespace: str) -> Iterator[OperatorThread]:
    """The operator in this process, watching the test's namespace; workers run as pods."""
    assert kube_node.control_plane is not None and kube_node.images is not None
    assert kube_node.kafka is not None and kube_node.redis is not None
    kube_node.control_plane.install_crd(PIPELINE_CRD)
    settings = OperatorSettings(
        render=RenderSettings(
            image=kube_node.images.flowmill,
            image_pull_policy="Never",
            topic_management="admin",
            default_bootstrap_servers=kube_node.kafka.bootstrap_servers,
            default_redis_url=kube_node.redis.url,
        ),
        namespaces=(node_namespace,),
        kubeconfig=str(kube_node.kubeconfig),
        pod_monitors="never",
        resync_seconds=5.0,
        retry_seconds=1.0,
    )
    thread = OperatorThread(settings).start()
    try:
        yield thread
    finally:
        thread.stop()


@dataclass
class Watch:
    """What the HPA and the group did, sampled while a test waits."""

    desired: list[tuple[float, int]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max((d for _, d in self.desired), default=0)


class Step:
    """The autoscaled step of one Pipeline: its HPA, Deployment, group and lag."""

    def __init__(
        self, node: KubeNode, api: k8s_client.ApiClient, stack: MetricsStack, ns: str, name: str
    ) -> None:
        self.node, self.stack, self.ns, self.name = node, stack, ns, name
        self.apps = k8s_client.AppsV1Api(api)
        self.hpas = k8s_client.AutoscalingV2Api(api)
        self.custom = k8s_client.CustomObjectsApi(api)
        self.deployment = naming.step_deployment(name, "tag")
        self.group = consumer_group(name, "tag")
        self.watch = Watch()

    def hpa(self) -> k8s_client.V2HorizontalPodAutoscaler | None:
        try:
            return self.hpas.read_namespaced_horizontal_pod_autoscaler(self.deployment, self.ns)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def desired(self) -> int:
        hpa = self.hpa()
        value = int(hpa.status.desired_replicas or 0) if hpa and hpa.status else 0
        self.watch.desired.append((time.monotonic(), value))
        return value

    def ready(self) -> int:
        d = self.apps.read_namespaced_deployment(self.deployment, self.ns)
        return int(d.status.ready_replicas or 0)

    def lag(self) -> float | None:
        return self.stack.value(
            f'flowmill:step_lag:sum{{namespace="{self.ns}",pipeline="{self.name}",step="tag"}}'
        )

    def members(self) -> dict[str, set[int]]:
        """The consumer group's members and the partitions each owns, from Kafka."""
        assert self.node.kafka is not None
        admin = KafkaAdminClient(bootstrap_servers=self.node.kafka.bootstrap_servers)
        try:
            (described,) = admin.describe_consumer_groups([self.group])
        finally:
            admin.close()
        return {
            m.member_id: {p for t in m.member_assignment.assignment for p in t[1]}
            for m in described.members
            if m.member_assignment is not None
        }

    def status(self) -> dict[str, Any]:
        got = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name)
        steps = (got.get("status") or {}).get("steps") or []
        return next((s for s in steps if s.get("name") == "tag"), {})


def apply(api: k8s_client.ApiClient, ns: str, manifest: dict[str, Any]) -> None:
    k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, manifest
    )


def started(step: Step) -> None:
    """One worker consuming, and the HPA reading its metric (the loop is connected)."""
    wait_for(lambda: step.ready() >= 1, 180, f"{step.deployment} to have a ready worker", 1)

    def reads_metric() -> bool:
        hpa = step.hpa()
        return bool(hpa and hpa.status and hpa.status.current_metrics)

    wait_for(reads_metric, 120, f"HPA {step.deployment} to read its lag metric", 1)


def test_lag_burst_scales_out_drains_exactly_and_scales_back(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    node_namespace: str,
    metrics_stack: MetricsStack,
    operator: OperatorThread,
) -> None:
    assert kube_node.kafka is not None
    name = f"burst-{secrets.token_hex(3)}"
    apply(node_api_client, node_namespace, pipeline_manifest(name, max_replicas=PARTITIONS))
    step = Step(kube_node, node_api_client, metrics_stack, node_namespace, name)
    started(step)
    assert step.desired() == 1

    bootstrap = kube_node.kafka.bootstrap_servers
    events = [{"n": i} for i in range(BURST)]
    asyncio.run(produce(bootstrap, f"{name}-events", events, key_field="n"))

    wait_for(lambda: step.desired() > 1, 120, "the HPA to want more workers", 1)
    wait_for(lambda: step.ready() > 1, 180, "new worker pods to be ready", 1)
    # The new pods joined the group: more than one member, each owning partitions, all
    # partitions owned.
    wait_for(
        lambda: (
            len(m := step.members()) > 1
            and all(m.values())
            and set().union(*m.values()) == set(range(PARTITIONS))
        ),
        120,
        "the partitions to spread over the new members",
        1,
    )

    wait_for(lambda: step.lag() == 0, 600, "the lag to drain", 2)
    records = asyncio.run(consume_all(bootstrap, f"{name}-tagged", BURST, timeout=120, settle=3))
    outputs = sorted(json.loads(r.value)["n"] for r in records)
    assert outputs == list(range(BURST)), "every event exactly once"
    assert all(json.loads(r.value)["doubled"] == 2 * json.loads(r.value)["n"] for r in records)
    assert 2 <= step.watch.peak <= PARTITIONS

    # Scale-down: 20 s of low lag, then at most half per minute, so 4 -> 2 -> 1.
    wait_for(lambda: step.desired() == 1, 400, "the HPA to come back to one worker", 2)
    wait_for(lambda: step.ready() == 1 and len(step.members()) == 1, 240, "one worker left", 2)


def test_max_replicas_above_the_partitions_is_capped(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    node_namespace: str,
    metrics_stack: MetricsStack,
    operator: OperatorThread,
) -> None:
    name = f"capped-{secrets.token_hex(3)}"
    apply(node_api_client, node_namespace, pipeline_manifest(name, max_replicas=10))
    step = Step(kube_node, node_api_client, metrics_stack, node_namespace, name)
    started(step)
    hpa = step.hpa()
    assert hpa is not None and hpa.spec.max_replicas == PARTITIONS

    def capped_in_status() -> dict[str, Any] | None:
        status = step.status()
        return status if status.get("maxReplicas") == PARTITIONS else None

    status = wait_for(capped_in_status, 60, "status.steps[].maxReplicas to show the cap", 1)
    assert f"capped at the {PARTITIONS} partitions" in status["message"]

    # The HPA holds to the cap even when the lag asks for far more.
    assert kube_node.kafka is not None
    events = [{"n": i} for i in range(BURST // 2)]
    asyncio.run(produce(kube_node.kafka.bootstrap_servers, f"{name}-events", events, "n"))
    wait_for(lambda: step.desired() > 1, 120, "the HPA to want more workers", 1)
    wait_for(lambda: step.lag() == 0, 600, "the lag to drain", 2)
    assert step.watch.peak <= PARTITIONS
