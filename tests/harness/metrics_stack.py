"""The autoscaling loop's metrics half on the single-node cluster: Prometheus scraping the
pods, and prometheus-adapter serving external.metrics.k8s.io through the apiserver's
aggregation layer, so that the controller-manager's real HPA controller reads lag.

Both run as processes inside the node's network namespace, with the rules the chart
ships (charts/flowmill/files): Prometheus scrapes the pods annotated prometheus.io/scrape,
as a Prometheus without the Prometheus Operator does. Debian builds Prometheus without
Kubernetes service discovery, so the harness lists the pods on the test apiserver and
keeps a file_sd targets file current (what that discovery plus the usual relabelling
would produce; tests/harness/prometheus.py). Prometheus listens on the node address, so
that the pods reach it too (the chart's monitoring.prometheusUrl, which every Pipeline's
API reads for its health view); the adapter
listens on the node address, and a selector-less Service with a manual Endpoints object
plus an APIService register it (the apiserver runs with --enable-aggregator-routing and
front-proxy certificates, tests/harness/kube.py).

Prometheus is Debian's (/usr/bin/prometheus, the package that brings promtool); the adapter
is built by `scripts/provision.sh prometheus-adapter`. A missing one raises
ComponentMissing, which tests report as a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill.local import find_binary
from flowmill.local.ports import StartStop, free_ports, spawn, terminate
from tests.harness.kube import wait_started
from tests.harness.node import NODE_IP, KubeNode
from tests.harness.prometheus import PrometheusServer
from tests.harness.waiting import https_ok, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART_FILES = ROOT / "charts" / "flowmill" / "files"
RECORDING_RULES = CHART_FILES / "recording-rules.yaml"
ADAPTER_VALUES = CHART_FILES / "prometheus-adapter-values.yaml"
EXTERNAL_GROUP = "external.metrics.k8s.io"
EXTERNAL_VERSION = "v1beta1"
APISERVICE = f"{EXTERNAL_VERSION}.{EXTERNAL_GROUP}"
NAMESPACE = "flowmill-metrics"
SERVICE = "prometheus-adapter"


def adapter_config() -> dict[str, Any]:
    """The adapter's config file: the external rules of the chart's adapter values."""
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    return {"externalRules": values["rules"]["external"]}


def scrape_targets(pods: list[k8s_client.V1Pod]) -> list[dict[str, Any]]:
    """What Kubernetes service discovery plus the usual relabelling keeps: Running pods
    annotated prometheus.io/scrape, at their IP and annotated port and path, labelled with
    their namespace and name."""
    targets = []
    for pod in pods:
        notes = pod.metadata.annotations or {}
        if notes.get("prometheus.io/scrape") != "true" or pod.status.phase != "Running":
            continue
        if not pod.status.pod_ip or not notes.get("prometheus.io/port"):
            continue
        targets.append(
            {
                "targets": [f"{pod.status.pod_ip}:{notes['prometheus.io/port']}"],
                "labels": {
                    "namespace": pod.metadata.namespace,
                    "pod": pod.metadata.name,
                    "__metrics_path__": notes.get("prometheus.io/path", "/metrics"),
                },
            }
        )
    return targets


class MetricsStack(StartStop):
    """Prometheus + prometheus-adapter for a started KubeNode; stop() unregisters the
    APIService first, so that the apiserver's discovery never lists a dead API."""

    def __init__(
        self,
        node: KubeNode,
        *,
        scrape_interval: str = "2s",
        relist_interval: str = "5s",
        start_timeout: float = 60.0,
    ) -> None:
        self.node = node
        self.scrape_interval = scrape_interval
        self.relist_interval = relist_interval
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.prometheus: PrometheusServer | None = None
        self.adapter_port: int | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._stop_discovery = threading.Event()
        self._discovery: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MetricsStack:
        adapter = find_binary("adapter")
        cp = self.node.control_plane
        if cp is None or cp.kubeconfig is None:
            raise RuntimeError("MetricsStack needs a started KubeNode")
        self.dir = self.node.dir / "metrics"
        self.dir.mkdir(exist_ok=True)
        rules = self.dir / RECORDING_RULES.name
        shutil.copy(RECORDING_RULES, rules)
        self.prometheus = PrometheusServer(
            self.dir,
            host=NODE_IP,
            scrape_interval=self.scrape_interval,
            rules=rules,
            start_timeout=self.start_timeout,
        )
        try:
            self.prometheus.write_targets([])
            self._start_discovery()
            self.prometheus.start()
            self._start_adapter(adapter, cp.kubeconfig)
            self._register()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._unregister()
        self._stop_discovery.set()
        if self._discovery is not None:
            self._discovery.join(timeout=10)
            self._discovery = None
        for _, proc, _ in reversed(self._procs):
            terminate(proc, 10.0)
        self._procs.clear()
        if self.prometheus is not None:
            self.prometheus.stop()

    # -- queries -----------------------------------------------------------------------------

    @property
    def prometheus_url(self) -> str | None:
        """Where Prometheus answers, from the test process and from the pods alike."""
        return self.prometheus.url if self.prometheus is not None else None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's samples: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        assert self.prometheus is not None
        return self.prometheus.query(promql)

    def value(self, promql: str) -> float | None:
        """The query's single value (summed over its samples), None without samples."""
        assert self.prometheus is not None
        return self.prometheus.value(promql)

    def external_metric(
        self, namespace: str, metric: str, labels: dict[str, str]
    ) -> list[dict[str, Any]]:
        """What the HPA controller reads: the metric's items through the apiserver."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        path = (
            f"/apis/{EXTERNAL_GROUP}/{EXTERNAL_VERSION}/namespaces/{namespace}/{metric}?"
            + urllib.parse.urlencode({"labelSelector": selector})
        )
        assert self.node.control_plane is not None
        data = json.loads(self.node.control_plane.kubectl("get", "--raw", path))
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    # -- components --------------------------------------------------------------------------

    def _start_discovery(self) -> None:
        """List the pods every second and rewrite the targets file when they change."""
        prometheus = self.prometheus
        assert prometheus is not None
        self._stop_discovery.clear()

        def loop() -> None:
            with self.node.api_client() as api:
                core = k8s_client.CoreV1Api(api)
                last: list[dict[str, Any]] = []
                while not self._stop_discovery.wait(1.0):
                    try:
                        current = scrape_targets(core.list_pod_for_all_namespaces().items)
                    except (ApiException, OSError):
                        continue  # the apiserver is going away at teardown
                    if current != last:
                        prometheus.write_targets(current)
                        last = current

        self._discovery = threading.Thread(target=loop, name="scrape-discovery", daemon=True)
        self._discovery.start()

    def _start_adapter(self, binary: Path, kubeconfig: Path) -> None:
        assert self.dir is not None and self.prometheus_url is not None
        (port,) = free_ports(1)
        self.adapter_port = port
        config = self.dir / "adapter.yaml"
        config.write_text(yaml.safe_dump(adapter_config()))
        self._spawn(
            "prometheus-adapter",
            [
                str(binary),
                f"--secure-port={port}",
                # The apiserver dials the Service's endpoint, which cannot be loopback.
                f"--bind-address={NODE_IP}",
                f"--cert-dir={self.dir / 'adapter-certs'}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--prometheus-url={self.prometheus_url}/",
                f"--metrics-relist-interval={self.relist_interval}",
                f"--config={config}",
                "--v=2",
            ],
        )
        self._wait("prometheus-adapter", lambda: https_ok(f"https://{NODE_IP}:{port}/readyz"))

    def _register(self) -> None:
        assert self.adapter_port is not None
        with self.node.api_client() as api:
            core = k8s_client.CoreV1Api(api)
            _create(lambda: core.create_namespace({"metadata": {"name": NAMESPACE}}))
            port = {"name": "https", "port": 443, "targetPort": self.adapter_port}
            _create(
                lambda: core.create_namespaced_service(
                    NAMESPACE, {"metadata": {"name": SERVICE}, "spec": {"ports": [port]}}
                )
            )
            # No selector: the endpoint is the adapter process on the node (the
            # endpoint-slice mirroring controller copies it into an EndpointSlice).
            _create(
                lambda: core.create_namespaced_endpoints(
                    NAMESPACE,
                    {
                        "metadata": {"name": SERVICE},
                        "subsets": [
                            {
                                "addresses": [{"ip": NODE_IP}],
                                "ports": [{"name": "https", "port": self.adapter_port}],
                            }
                        ],
                    },
                )
            )
            registration = k8s_client.ApiregistrationV1Api(api)
            body = {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": APISERVICE},
                "spec": {
                    "group": EXTERNAL_GROUP,
                    "version": EXTERNAL_VERSION,
                    "service": {"namespace": NAMESPACE, "name": SERVICE, "port": 443},
                    # The adapter's self-signed serving cert (--cert-dir).
                    "insecureSkipTLSVerify": True,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            }
            _create(lambda: registration.create_api_service(body))

            def available() -> bool:
                got = registration.read_api_service(APISERVICE)
                conditions = (got.status.conditions if got.status else None) or []
                return any(c.type == "Available" and c.status == "True" for c in conditions)

            try:
                wait_for(
                    available,
                    self.start_timeout,
                    f"APIService {APISERVICE} Available",
                    interval=0.5,
                )
            except TimeoutError as err:
                got = registration.read_api_service(APISERVICE)
                raise TimeoutError(f"{err}: {got.status}") from None

    def _unregister(self) -> None:
        if self.node.control_plane is None or self.node.control_plane.kubeconfig is None:
            return
        with self.node.api_client() as api:
            try:
                k8s_client.ApiregistrationV1Api(api).delete_api_service(APISERVICE)
            except ApiException as e:
                if e.status != 404:
                    raise

    # -- process plumbing --------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.dir is not None
        log_path = self.dir / f"{name}.log"
        self._procs.append((name, spawn(argv, log_path, cwd=self.dir), log_path))

    def _wait(self, name: str, check: Callable[[], bool]) -> None:
        _, proc, log_path = next(p for p in self._procs if p[0] == name)
        wait_started(name, proc, log_path, check, self.start_timeout)


def _create(make: Callable[[], object]) -> None:
    try:
        make()
    except ApiException as e:
        if e.status != 409:
            raise


def wait_seconds(
    probe: Callable[[], object], timeout: float, what: str, interval: float = 0.5
) -> float:
    """Poll probe() until truthy; the seconds it took (for the benchmark's figures)."""
    began = time.monotonic()
    wait_for(probe, timeout, what, interval=interval)
    return time.monotonic() - began
