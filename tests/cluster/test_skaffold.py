"""`skaffold run -p buildah` on a machine without a Docker engine: skaffold's custom builder
(scripts/skaffold-buildah.sh) builds the Dockerfile with buildah inside the node's network
namespace, which reaches no package index (the dependency layer comes from buildah's cache
of the provisioning build), pushes to the node's local registry, deploys the chart from it
and the StreamPulse example, and the example's API answers through its Service."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s_client

from flowmill.local import cache_dir, find_binary
from flowmill.spec import API_PORT
from flowmill_operator import naming
from tests.cluster.examples import assert_restricted
from tests.cluster.release import (
    ROOT,
    create_restricted_namespace,
    describe_pods,
    pod_ready,
    run_tool,
    wait_ready_pod,
)
from tests.examples.harness import wait_for
from tests.harness.node import REGISTRY, KubeNode

pytestmark = pytest.mark.node

# skaffold.yaml's buildah profile: its release, the namespace it watches, the example.
RELEASE = "flowmill-dev"
OPERATOR_NAMESPACE = "flowmill-system"
EXAMPLES_NAMESPACE = "flowmill-examples"
PIPELINE = "streampulse"


def skaffold(node: KubeNode, home: Path, *args: str, timeout: float = 600.0) -> str:
    env = {
        **node.env(),
        "HOME": str(home),
        "PATH": f"{cache_dir() / 'bin'}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
        "FLOWMILL_CACHE": str(cache_dir()),
        "FLOWMILL_INSECURE_REGISTRY": "1",
        # skaffold asks once whether it may collect metrics; nobody is there to answer.
        "SKAFFOLD_COLLECT_METRICS": "false",
        "SKAFFOLD_UPDATE_CHECK": "false",
    }
    return run_tool(
        [
            str(find_binary("skaffold")),
            *args,
            "--profile=buildah",
            f"--default-repo={REGISTRY}",
            "--interactive=false",
            "--update-check=false",
        ],
        env=env,
        timeout=timeout,
    )


def test_skaffold_run_builds_with_buildah_and_the_example_answers(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, tmp_path: Path
) -> None:
    core = k8s_client.CoreV1Api(node_api_client)
    create_restricted_namespace(core, EXAMPLES_NAMESPACE)
    began = time.monotonic()
    out = skaffold(kube_node, tmp_path, "run", "--status-check=true")
    print(
        f"[cluster] skaffold run (build, push, deploy, status check): {time.monotonic() - began:.1f}s"
    )
    try:
        operator = wait_ready_pod(
            core,
            OPERATOR_NAMESPACE,
            f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator",
        )
        image = operator.spec.containers[0].image
        assert image.startswith(f"{REGISTRY}/flowmill:") and "@sha256:" in image, (image, out)
        # Pulled from the registry by containerd, not the archive provisioning imported.
        assert operator.status.container_statuses[0].image_id.startswith(
            f"{REGISTRY}/flowmill@sha256:"
        ), operator.status.container_statuses[0].image_id

        selector = naming.child_selector(PIPELINE)

        def running() -> list[k8s_client.V1Pod] | None:
            pods = core.list_namespaced_pod(EXAMPLES_NAMESPACE, label_selector=selector).items
            return pods if len(pods) == 3 and all(pod_ready(p) for p in pods) else None

        try:
            pods = wait_for("StreamPulse's source, step and API pods Ready", running, 180)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{describe_pods(core, EXAMPLES_NAMESPACE)}") from None
        assert {p.spec.containers[0].image for p in pods} == {image}
        assert_restricted(node_api_client, EXAMPLES_NAMESPACE, pods)

        service = core.read_namespaced_service(naming.api_deployment(PIPELINE), EXAMPLES_NAMESPACE)
        base = f"http://{service.spec.cluster_ip}:{API_PORT}"
        table = f"/pipelines/{PIPELINE}/tables/region_metrics"
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as http:

            def answered() -> dict[str, object] | None:
                page = http.get(f"{table}/keys/1/windows")
                windows = page.json()["windows"] if page.status_code == 200 else []
                return windows[0] if windows and windows[0]["values"]["trips"] > 0 else None

            window = wait_for("region 1's first window served", answered, 120)
            print(
                f"[cluster] skaffold: StreamPulse answered {time.monotonic() - began:.1f}s after `skaffold run`"
            )
            assert set(window["values"]) >= {"trips", "revenue", "avg_duration", "max_fare"}  # type: ignore[arg-type]
    finally:
        skaffold(kube_node, tmp_path, "delete", timeout=180)
        core.delete_namespace(EXAMPLES_NAMESPACE)


def test_skaffold_yaml_keeps_the_kind_profile() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    profiles = {p["name"]: p for p in config["profiles"]}
    assert profiles["kind"]["build"]["artifacts"][0]["docker"]["dockerfile"] == "Dockerfile"
    assert profiles["kind"]["build"]["local"]["push"] is False
    assert profiles["buildah"]["build"]["local"]["push"] is True
