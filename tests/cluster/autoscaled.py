"""An autoscaled step on the single-node cluster, watched from outside: its HPA (desired
replicas, conditions), its Deployment's ready pods, its consumer group in Kafka and its lag
as Prometheus records it (the `metrics_stack` fixture, tests/cluster/fixtures.py). Used by
tests/cluster/test_autoscaling.py, the Faust step's scale-out in
tests/cluster/test_trip_fraud_cluster.py and benchmarks/autoscaling_bench.py."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill.spec import consumer_group
from flowmill_operator import naming
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for

GROUP, VERSION, PLURAL = "flowmill.dev", "v1alpha1", "pipelines"


@dataclass
class Watch:
    """What the HPA and the group did, sampled while a test waits."""

    desired: list[tuple[float, int]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max((d for _, d in self.desired), default=0)


class Step:
    """The autoscaled step `step` of the Pipeline `name`: its HPA, Deployment, group and
    lag."""

    def __init__(
        self,
        node: KubeNode,
        api: k8s_client.ApiClient,
        stack: MetricsStack,
        ns: str,
        name: str,
        step: str,
    ) -> None:
        self.node, self.stack, self.ns, self.name, self.step = node, stack, ns, name, step
        self.apps = k8s_client.AppsV1Api(api)
        self.core = k8s_client.CoreV1Api(api)
        self.hpas = k8s_client.AutoscalingV2Api(api)
        self.custom = k8s_client.CustomObjectsApi(api)
        self.deployment = naming.step_deployment(name, step)
        self.group = consumer_group(name, step)
        self.watch = Watch()

    @property
    def selector(self) -> str:
        """The PromQL label matcher of this step's series."""
        return f'{{namespace="{self.ns}",pipeline="{self.name}",step="{self.step}"}}'

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
        return self.stack.value(f"flowmill:step_lag:sum{self.selector}")

    def members(self, topic: str | None = None) -> dict[str, set[int]]:
        """The consumer group's members and the partitions each owns, from Kafka (of
        `topic` only, when given: a Faust worker also owns its Tables' changelogs)."""
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
                {
                    p
                    for owned, partitions in m.member_assignment.assignment
                    if topic is None or owned == topic
                    for p in partitions
                }
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
        labels = {"pipeline": self.name, "step": self.step}
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

    def pods_report(self) -> str:
        """Each of the step's pods (phase, readiness, restarts, why its container last
        stopped) and the namespace's latest events about them, for a failure: a wait for
        ready pods that times out says which link broke (scheduling, image, probes, OOM)."""
        d = self.apps.read_namespaced_deployment(self.deployment, self.ns)
        labels = ",".join(f"{k}={v}" for k, v in (d.spec.selector.match_labels or {}).items())
        lines = [f"deployment {self.deployment}: {d.status}"]
        pods = self.core.list_namespaced_pod(self.ns, label_selector=labels).items
        for pod in pods:
            lines.append(f"pod {pod.metadata.name} phase {pod.status.phase}")
            for c in pod.status.conditions or []:
                lines.append(f"  condition {c.type}={c.status} {c.reason or ''} {c.message or ''}")
            for cs in pod.status.container_statuses or []:
                last = cs.last_state.terminated if cs.last_state else None
                lines.append(
                    f"  container {cs.name} ready {cs.ready} restarts {cs.restart_count}"
                    f" state {cs.state}"
                    + (f" last exit {last.exit_code} {last.reason}" if last else "")
                )
        events = self.core.list_namespaced_event(self.ns).items
        ours = [
            e
            for e in events
            if (e.involved_object.name or "").startswith(self.deployment) and e.type != "Normal"
        ]
        ours.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
        lines.append("warning events:")
        lines += [
            f"  {e.last_timestamp} {e.involved_object.name} {e.reason}: {e.message}"
            for e in ours[-25:]
        ]
        return "\n".join(lines)

    def status(self) -> dict[str, Any]:
        got = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name)
        steps = (got.get("status") or {}).get("steps") or []
        return next((s for s in steps if s.get("name") == self.step), {})


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
        step = self.step
        while not self._stop.wait(self.every):
            try:
                rate = step.stack.value(f"flowmill:step_events_in:rate1m{step.selector}")
                print(
                    f"[trace] {time.monotonic() - self._began:6.1f}s desired {step.desired()}"
                    f" ready {step.ready()} lag {step.lag()} events/s {rate}",
                    flush=True,
                )
            except Exception as e:  # the trace must never fail a test
                print(f"[trace] {e!r}", flush=True)


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
