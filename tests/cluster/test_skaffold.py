"""`skaffold run -p buildah` on a machine without a Docker engine: skaffold's custom builder
(scripts/skaffold-buildah.sh) builds the Dockerfile with buildah inside the node's network
namespace, which reaches no package index (the dependency layer comes from buildah's cache
of the provisioning build), pushes to the node's local registry, deploys the chart from it
and the StreamPulse example, and the example's API answers through its Service."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
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
from tests.harness.node import REGISTRY, KubeNode
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.node

# skaffold.yaml's buildah profile: its release, the namespace it watches, the example.
RELEASE = "flowmill-dev"
OPERATOR_NAMESPACE = "flowmill-system"
EXAMPLES_NAMESPACE = "flowmill-examples"
PIPELINE = "streampulse"
EXAMPLE = Path(__file__).resolve().parents[2] / "k8s" / "examples" / "cluster" / "streampulse.yaml"


def pipeline_deployments() -> int:
    """A Deployment per source and step, and the API's: what the example asks for."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "Pipeline"]
    spec = docs[0]["spec"]
    return len(spec.get("sources", [])) + len(spec.get("steps", [])) + 1


# skaffold's global config: no metrics (answering its prompt would turn them on, and with them
# a request to the internet), no update check, no survey. Only loopback and the namespace.
QUIET = {
    "global": {
        "collect-metrics": False,
        "update-check": False,
        "survey": {"disable-prompt": True},
    }
}


def skaffold_env(home: Path) -> dict[str, str]:
    (home / ".skaffold").mkdir(parents=True, exist_ok=True)
    (home / ".skaffold" / "config").write_text(yaml.safe_dump(QUIET))
    return {
        "HOME": str(home),
        "PATH": f"{cache_dir() / 'bin'}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
        "SKAFFOLD_UPDATE_CHECK": "false",
    }


def skaffold(node: KubeNode, home: Path, *args: str, timeout: float = 600.0) -> str:
    env = {
        **node.env(),
        **skaffold_env(home),
        "FLOWMILL_CACHE": str(cache_dir()),
        "FLOWMILL_INSECURE_REGISTRY": "1",
    }
    return run_tool(
        [str(find_binary("skaffold")), *args, "--profile=buildah"], env=env, timeout=timeout
    )


def test_skaffold_run_builds_with_buildah_and_the_example_answers(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, tmp_path: Path
) -> None:
    core = k8s_client.CoreV1Api(node_api_client)
    create_restricted_namespace(core, EXAMPLES_NAMESPACE)
    began = time.monotonic()
    out = skaffold(
        kube_node,
        tmp_path,
        "run",
        f"--default-repo={REGISTRY}",
        "--status-check=true",
        "--interactive=false",
    )
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
        expected = pipeline_deployments()

        def running() -> list[k8s_client.V1Pod] | None:
            pods = core.list_namespaced_pod(EXAMPLES_NAMESPACE, label_selector=selector).items
            return pods if len(pods) == expected and all(pod_ready(p) for p in pods) else None

        try:
            pods = wait_for(
                running, 180, f"StreamPulse's {expected} pods Ready (sources, steps, API)"
            )
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

            window = wait_for(answered, 120, "region 1's first window served")
            print(
                f"[cluster] skaffold: StreamPulse answered {time.monotonic() - began:.1f}s after `skaffold run`"
            )
            assert set(window["values"]) >= {"trips", "revenue", "avg_duration", "max_fare"}  # type: ignore[arg-type]
    finally:
        skaffold(kube_node, tmp_path, "delete", timeout=180)
        core.delete_namespace(EXAMPLES_NAMESPACE)


def effective_config(profile: str, home: Path) -> dict[str, Any]:
    """skaffold.yaml with `profile` applied, as skaffold itself parses and validates it."""
    out = run_tool(
        [
            str(find_binary("skaffold")),
            "diagnose",
            "--yaml-only",
            f"--profile={profile}",
        ],
        env=skaffold_env(home),
        timeout=60,
    )
    config: dict[str, Any] = yaml.safe_load(out)
    return config


def test_skaffold_profiles_kind_with_docker_and_buildah_without(tmp_path: Path) -> None:
    kind = effective_config("kind", tmp_path)
    (artifact,) = kind["build"]["artifacts"]
    assert artifact["docker"]["dockerfile"] == "Dockerfile"
    assert kind["build"]["local"]["push"] is False

    buildah = effective_config("buildah", tmp_path)
    (artifact,) = buildah["build"]["artifacts"]
    assert "docker" not in artifact
    assert artifact["custom"]["buildCommand"] == "scripts/skaffold-buildah.sh"
    assert buildah["build"]["local"]["push"] is True
    assert buildah["build"]["insecureRegistries"] == [REGISTRY]
    (release,) = buildah["deploy"]["helm"]["releases"]
    # skaffold resolves paths against the config's folder.
    assert release["name"] == RELEASE
    assert Path(release["chartPath"]) == ROOT / "charts" / "flowmill"
    assert [Path(m) for m in buildah["manifests"]["rawYaml"]] == [
        ROOT / "k8s" / "examples" / "cluster" / "streampulse.yaml"
    ]
