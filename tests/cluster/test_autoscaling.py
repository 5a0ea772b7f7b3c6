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
import subprocess
import threading
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
BURST = 120_000
LAG_PER_REPLICA = 2_000
SCALE_DOWN = "20s"
# A small CPU limit makes one worker (about 1,500 events/s at 100m) slower than the test's
# producer (about 5,000/s), so the burst builds a lag that outlasts the HPA's reaction and
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
        # kafka-python decodes an assignment only when it has one: a member that joined but
        # owns nothing yet (mid-rebalance) comes back as raw empty bytes.
        return {
            m.member_id: (
                {p for _, partitions in m.member_assignment.assignment for p in partitions}
                if hasattr(m.member_assignment, "assignment")
                else set()
            )
            for m in described.members
        }

    def diagnosis(self) -> str:
        """Each link of the loop, for a failure: the HPA's conditions, what the adapter
        serves, what Prometheus scraped."""
        hpa = self.hpa()
        lines = [f"HPA status: {hpa.status if hpa else None}"]
        labels = {"pipeline": self.name, "step": "tag"}
        try:
            items = self.stack.external_metric(self.ns, "flowmill_consumer_lag", labels)
            lines.append(f"external metric items: {items}")
        except subprocess.CalledProcessError as e:
            lines.append(f"external metric: {e.stderr}")
        cp = self.node.control_plane
        if cp is not None and cp.dir is not None:
            log = (cp.dir / "kube-controller-manager.log").read_text(errors="replace")
            hpa_lines = [line for line in log.splitlines() if "horizontal" in line.lower()]
            lines.append("controller-manager on HPAs:\n" + "\n".join(hpa_lines[-15:]))
        selector = f'{{namespace="{self.ns}",pipeline="{self.name}"}}'
        lines.append(f"scraped lag: {self.stack.query('flowmill_consumer_lag' + selector)}")
        lines.append(f"targets: {self.stack.query('up')}")
        return "\n".join(lines)

    def status(self) -> dict[str, Any]:
        got = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name)
        steps = (got.get("status") or {}).get("steps") or []
        return next((s for s in steps if s.get("name") == "tag"), {})


class Trace:
    """A line every few seconds while a test runs (desired, ready, lag, rate): the course of
    the loop, shown on a failure and read for the benchmark's figures."""

    def __init__(self, step: Step, every: float = 5.0) -> None:
        self.step, self.every = step, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoscaling-trace", daemon=True)
        self._began = time.monotonic()

    def __enter__(self) -> Trace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def mark(self, what: str) -> float:
        """Seconds since the trace began, printed with `what` (a milestone of the test)."""
        seconds = time.monotonic() - self._began
        print(f"[trace] {seconds:6.1f}s {what}", flush=True)
        return seconds

    def _run(self) -> None:
        step, ns = self.step, self.step.ns
        selector = f'{{namespace="{ns}",pipeline="{step.name}",step="tag"}}'
        while not self._stop.wait(self.every):
            try:
                rate = step.stack.value(f"flowmill:step_events_in:rate1m{selector}")
                print(
                    f"[trace] {time.monotonic() - self._began:6.1f}s desired {step.desired()}"
                    f" ready {step.ready()} lag {step.lag()} events/s {rate}",
                    flush=True,
                )
            except Exception as e:  # the trace must never fail a test
                print(f"[trace] {e!r}", flush=True)


def apply(api: k8s_client.ApiClient, ns: str, manifest: dict[str, Any]) -> None:
    k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, manifest
    )


def started(step: Step) -> None:
    """One worker consuming, and the HPA reading its metric (the loop is connected)."""
    wait_for(
        lambda: step.ready() >= 1, 180, f"{step.deployment} to have a ready worker", interval=1
    )

    def reads_metric() -> bool:
        hpa = step.hpa()
        if hpa is None or hpa.status is None or not hpa.status.desired_replicas:
            return False
        # ScalingActive: the controller got the metric through the adapter and computed a
        # proposal (a failed read leaves currentMetrics with empty entries instead).
        conditions = hpa.status.conditions or []
        return any(c.type == "ScalingActive" and c.status == "True" for c in conditions)

    try:
        wait_for(reads_metric, 120, f"HPA {step.deployment} to read its lag metric", interval=1)
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{step.diagnosis()}") from None


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
    with Trace(step) as trace:
        asyncio.run(produce(bootstrap, f"{name}-events", events, key_field="n"))
        trace.mark(f"{BURST} events sent")

        wait_for(lambda: step.desired() > 1, 120, "the HPA to want more workers", interval=1)
        trace.mark("scale-up decided")
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
        assert all(json.loads(r.value)["doubled"] == 2 * json.loads(r.value)["n"] for r in records)
        assert 2 <= step.watch.peak <= PARTITIONS

        # Scale-down: 20 s of low lag, then at most half per minute, so 4 -> 2 -> 1.
        wait_for(lambda: step.desired() == 1, 240, "the HPA to come back to one worker", interval=2)
        trace.mark("HPA back at one worker")
        wait_for(
            lambda: step.ready() == 1 and len(step.members()) == 1,
            120,
            "one worker left",
            interval=2,
        )
        trace.mark("one worker left")


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

    status = wait_for(
        capped_in_status, 60, "status.steps[].maxReplicas to show the cap", interval=1
    )
    assert f"capped at the {PARTITIONS} partitions" in status["message"]

    # A lag that asks for more workers than partitions: the HPA stops at the cap and says
    # so (ScalingLimited), however long the lag stays.
    assert kube_node.kafka is not None
    events = [{"n": i} for i in range(BURST)]
    with Trace(step) as trace:
        asyncio.run(produce(kube_node.kafka.bootstrap_servers, f"{name}-events", events, "n"))

        def limited_at_the_cap() -> bool:
            hpa = step.hpa()
            conditions = (hpa.status.conditions if hpa and hpa.status else None) or []
            return step.desired() == PARTITIONS and any(
                c.type == "ScalingLimited" and c.status == "True" for c in conditions
            )

        wait_for(limited_at_the_cap, 120, "the HPA to stop at the partitions", interval=1)
        trace.mark("HPA limited at the partitions")
        wait_for(lambda: step.ready() == PARTITIONS, 120, "a worker per partition", interval=1)
        trace.mark("a worker per partition")
        assert step.watch.peak == PARTITIONS
