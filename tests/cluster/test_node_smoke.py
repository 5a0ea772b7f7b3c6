"""The single-node cluster runs real pods of the flowmill image, in a namespace that enforces
the `restricted` Pod Security Standard: a one-shot pod, a Deployment behind a Service, and
pods that reach the apiserver and the node's Kafka."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer  # type: ignore[import-untyped]
from kubernetes import client as k8s_client

from tests.cluster.pods import container, pod_logs, pod_spec, running_seconds, wait_for_phase
from tests.harness.node import NODE_IP, KubeNode
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "k8s" / "examples" / "streampulse.yaml"


def test_node_registers_ready(kube_node: KubeNode, node_api_client: k8s_client.ApiClient) -> None:
    node = k8s_client.CoreV1Api(node_api_client).read_node(kube_node.name)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert {"type": "InternalIP", "address": NODE_IP} in [
        a.to_dict() for a in node.status.addresses
    ]
    info = node.status.node_info
    server = k8s_client.VersionApi(node_api_client).get_code().git_version
    assert info.kubelet_version == server
    assert info.container_runtime_version.startswith("containerd://2.")


def test_pod_validates_a_manifest_from_a_configmap(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, node_namespace: str
) -> None:
    assert kube_node.images is not None
    core = k8s_client.CoreV1Api(node_api_client)
    core.create_namespaced_config_map(
        node_namespace,
        {"metadata": {"name": "pipeline"}, "data": {"pipeline.yaml": MANIFEST.read_text()}},
    )
    spec = pod_spec(
        container(
            "validate",
            kube_node.images.flowmill,
            args=["validate", "/manifests/pipeline.yaml"],
            volumeMounts=[{"name": "manifests", "mountPath": "/manifests", "readOnly": True}],
        ),
        restartPolicy="Never",
        volumes=[{"name": "manifests", "configMap": {"name": "pipeline"}}],
    )
    core.create_namespaced_pod(node_namespace, {"metadata": {"name": "validate"}, "spec": spec})
    pod = wait_for_phase(core, node_namespace, "validate", "Succeeded")
    print(f"validate pod: first container started {running_seconds(pod):.1f}s after creation")
    # What the same command prints on this machine, with the path the pod uses.
    local = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "flowmill"), "validate", str(MANIFEST)],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = local.stdout.replace(str(MANIFEST), "/manifests/pipeline.yaml")
    assert pod_logs(core, node_namespace, "validate") == expected


def test_api_deployment_answers_through_its_service(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, node_namespace: str
) -> None:
    assert kube_node.images is not None and kube_node.redis is not None
    core = k8s_client.CoreV1Api(node_api_client)
    apps = k8s_client.AppsV1Api(node_api_client)
    core.create_namespaced_config_map(
        node_namespace,
        {"metadata": {"name": "pipeline"}, "data": {"pipeline.yaml": MANIFEST.read_text()}},
    )
    labels = {"app": "api"}
    api = container(
        "api",
        kube_node.images.flowmill,
        args=[
            "api",
            "--pipeline=/manifests/pipeline.yaml",
            "--host=0.0.0.0",
            f"--redis-url={kube_node.redis.url}",
        ],
        ports=[{"name": "http", "containerPort": 8000}],
        readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        volumeMounts=[
            {"name": "manifests", "mountPath": "/manifests", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    )
    deployment = {
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(
                    api,
                    volumes=[
                        {"name": "manifests", "configMap": {"name": "pipeline"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                ),
            },
        },
    }
    began = time.monotonic()
    apps.create_namespaced_deployment(node_namespace, deployment)
    service = core.create_namespaced_service(
        node_namespace,
        {
            "metadata": {"name": "api"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("api", node_namespace).status
        return (status.available_replicas or 0) == 2

    wait_for(available, 120, "the api Deployment to have 2 available replicas")
    print(f"api Deployment: 2 replicas available in {time.monotonic() - began:.1f}s")

    # Through kube-proxy's rules for the ClusterIP, to whichever replica they pick.
    url = f"http://{service.spec.cluster_ip}/healthz"

    def healthy() -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.load(resp)) if resp.status == 200 else None
        except OSError:
            return None

    assert wait_for(healthy, 30, f"{url} to answer")
    pods = core.list_namespaced_pod(node_namespace, label_selector="app=api").items
    assert len({p.status.pod_ip for p in pods}) == 2


def test_pod_produces_to_the_nodes_kafka(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, node_namespace: str
) -> None:
    assert kube_node.images is not None and kube_node.kafka is not None
    topic = f"smoke-{secrets.token_hex(4)}"
    kube_node.kafka.create_topics([(topic, 1)])
    message = f"hello from a pod {secrets.token_hex(4)}"
    script = (
        "import sys\n"
        "from kafka import KafkaProducer\n"
        "producer = KafkaProducer(bootstrap_servers=sys.argv[1])\n"
        "producer.send(sys.argv[2], sys.argv[3].encode()).get(timeout=30)\n"
        "producer.close()\n"
    )
    core = k8s_client.CoreV1Api(node_api_client)
    spec = pod_spec(
        container(
            "produce",
            kube_node.images.flowmill,
            command=["python", "-c", script, kube_node.kafka.bootstrap_servers, topic, message],
        ),
        restartPolicy="Never",
    )
    core.create_namespaced_pod(node_namespace, {"metadata": {"name": "produce"}, "spec": spec})
    wait_for_phase(core, node_namespace, "produce", "Succeeded")

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kube_node.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    try:
        received = [record.value.decode() for record in consumer]
    finally:
        consumer.close()
    assert received == [message]


def test_pod_reaches_the_apiserver_through_the_kubernetes_service(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, node_namespace: str
) -> None:
    assert kube_node.images is not None
    script = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "print(client.VersionApi().get_code().git_version)\n"
    )
    core = k8s_client.CoreV1Api(node_api_client)
    spec = pod_spec(
        container("version", kube_node.images.flowmill, command=["python", "-c", script]),
        restartPolicy="Never",
    )
    core.create_namespaced_pod(node_namespace, {"metadata": {"name": "version"}, "spec": spec})
    wait_for_phase(core, node_namespace, "version", "Succeeded")
    server = k8s_client.VersionApi(node_api_client).get_code().git_version
    assert pod_logs(core, node_namespace, "version") == f"{server}\n"
