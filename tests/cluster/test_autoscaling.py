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
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from flowmill_operator.runner import OperatorThread
from flowmill_operator.settings import OperatorSettings, RenderSettings
from tests.cluster.autoscaled import GROUP, PLURAL, VERSION, Step, Trace, started
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for
from tests.operator.fixtures import PIPELINE_CRD
from tests.workers.harness import consume_all, produce

pytestmark = pytest.mark.node

PARTITIONS = 4
STEP = "tag"
BURST = 120_000
LAG_PER_REPLICA = 2_000
SCALE_DOWN = "20s"
# A small CPU limit makes one worker (1,500-2,000 events/s at 100m) slower than the test's
# producer (tests.workers.harness.produce, large batches: well over 10,000/s), so the burst builds a lag that outlasts the HPA's reaction and
# the new pods' start.
WORKER_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "192Mi"},
    "limits": {"cpu": "100m", "memory": "256Mi"},
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
                    "name": STEP,
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


def apply(api: k8s_client.ApiClient, ns: str, manifest: dict[str, Any]) -> None:
    k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, manifest
    )


def test_lag_burst_scales_out_to_the_partitions_drains_exactly_and_scales_back(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    node_namespace: str,
    metrics_stack: MetricsStack,
    operator: OperatorThread,
) -> None:
    """One burst shows the whole loop, and the cap with it: maxReplicas 10 over 4
    partitions renders an HPA capped at 4 (a fifth member would own nothing), status says
    so, and a lag that asks for more than 4 workers stops there with ScalingLimited."""
    assert kube_node.kafka is not None
    name = f"burst-{secrets.token_hex(3)}"
    apply(node_api_client, node_namespace, pipeline_manifest(name, max_replicas=10))
    step = Step(kube_node, node_api_client, metrics_stack, node_namespace, name, STEP)
    started(step)
    assert step.desired() == 1
    hpa = step.hpa()
    assert hpa is not None and hpa.spec.max_replicas == PARTITIONS

    def capped_in_status() -> dict[str, Any] | None:
        status = step.status()
        return status if status.get("maxReplicas") == PARTITIONS else None

    status = wait_for(
        capped_in_status, 60, "status.steps[].maxReplicas to show the cap", interval=1
    )
    assert f"capped at the {PARTITIONS} partitions" in status["message"]

    def limited_at_the_cap() -> bool:
        hpa = step.hpa()
        conditions = (hpa.status.conditions if hpa and hpa.status else None) or []
        return step.desired() == PARTITIONS and any(
            c.type == "ScalingLimited" and c.status == "True" for c in conditions
        )

    bootstrap = kube_node.kafka.bootstrap_servers
    events = [{"n": i} for i in range(BURST)]
    with Trace(step) as trace:
        try:
            asyncio.run(produce(bootstrap, f"{name}-events", events, key_field="n"))
            trace.mark(f"{BURST} events sent")

            wait_for(lambda: step.desired() > 1, 120, "the HPA to want more workers", interval=1)
            trace.mark("scale-up decided")
            # 120,000 events at 2,000 per replica ask for far more than 4 workers.
            wait_for(limited_at_the_cap, 120, "the HPA to stop at the partitions", interval=1)
            trace.mark("HPA limited at the partitions")
            wait_for(lambda: step.ready() > 1, 180, "new worker pods to be ready", interval=1)
            trace.mark("new pods ready")
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
                interval=1,
            )
            trace.mark("partitions spread")

            wait_for(lambda: step.lag() == 0, 240, "the lag to drain", interval=2)
            trace.mark("lag drained")
            records = asyncio.run(
                consume_all(bootstrap, f"{name}-tagged", BURST, timeout=120, settle=3)
            )
            trace.mark(f"{len(records)} outputs read")
            outputs = sorted(json.loads(r.value)["n"] for r in records)
            assert outputs == list(range(BURST)), "every event exactly once"
            assert all(
                json.loads(r.value)["doubled"] == 2 * json.loads(r.value)["n"] for r in records
            )
            assert 2 <= step.watch.peak <= PARTITIONS, "never more workers than partitions"

            # Scale-down: 20 s of low lag, then at most half per minute, so 4 -> 2 -> 1.
            wait_for(
                lambda: step.desired() == 1, 240, "the HPA to come back to one worker", interval=2
            )
            trace.mark("HPA back at one worker")
            wait_for(
                lambda: step.ready() == 1 and len(step.members()) == 1,
                120,
                "one worker left",
                interval=2,
            )
            trace.mark("one worker left")
        except TimeoutError as err:
            # Which link broke: the HPA, the metric, or the pods (probes, restarts).
            raise AssertionError(f"{err}\n{step.diagnosis()}\n{step.pods_report()}") from None
