"""Pods for the cluster tests: the restricted security context, and waiting on phases."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

# What the `restricted` Pod Security Standard asks of every container.
RESTRICTED_CONTAINER: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
    "readOnlyRootFilesystem": True,
}
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Guaranteed QoS: requests equal limits, so the node's cgroup limits really apply.
SMALL: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "250m", "memory": "256Mi"},
}


def container(name: str, image: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "securityContext": RESTRICTED_CONTAINER,
        "resources": SMALL,
        **fields,
    }


def pod_spec(*containers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"securityContext": RESTRICTED_POD, "containers": list(containers), **fields}


def wait_for_phase(
    core: k8s_client.CoreV1Api, namespace: str, name: str, phase: str, timeout: float = 90.0
) -> k8s_client.V1Pod:
    """Wait until the pod reaches `phase`; fail early, with its status and logs, if it ends
    in another phase."""
    deadline = time.monotonic() + timeout
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase == phase:
            return pod
        if pod.status.phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
            raise AssertionError(
                f"pod {namespace}/{name} is {pod.status.phase}, not {phase}:\n"
                f"{pod.status}\nlogs:\n{pod_logs(core, namespace, name)}"
            )
        time.sleep(0.2)


def pod_logs(core: k8s_client.CoreV1Api, namespace: str, name: str) -> str:
    try:
        return str(core.read_namespaced_pod_log(name, namespace))
    except ApiException as e:
        return f"(no logs: {e.reason})"


def running_seconds(pod: k8s_client.V1Pod) -> float:
    """From the pod's creation to its first container starting, by the cluster's clock."""
    started = min(
        s.state.running.started_at if s.state.running else s.state.terminated.started_at
        for s in pod.status.container_statuses
    )
    return float((started - pod.metadata.creation_timestamp).total_seconds())
