"""The apiserver killed (SIGKILL) and restarted twice under a running `flowmill operator`
process while a Pipeline is being edited (issue #15): the operator stays up (its watches
and requests fail while the apiserver is away, Kopf reconnects, failed reconciles are
retried), and in the end the children are exactly the render of the final spec, one of
each, and the Pipeline is Ready.

The apiserver is the session's (etcd and the controllers stay up): tests of one xdist
worker run one after another, so none runs while it is away, and it is ready again when
this test ends.
"""

from __future__ import annotations

import copy
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from flowmill.local.ports import free_port
from flowmill_operator import naming
from tests.harness.kube import KubeControlPlane
from tests.harness.waiting import wait_for
from tests.operator.fixtures import TEST_IMAGE, TEST_RENDER, delete_pipelines
from tests.operator.helpers import Cluster, example_files, for_namespace, pipeline_documents
from tests.operator.test_reconcile import contains, expected, keys, live_children, make_ready, read

SKETCH = example_files()[0]
DOWN_S = 2.0
"""How long the apiserver stays dead each time: long enough for every watch and request
of the operator to fail."""


def _edit(body: dict[str, Any], round_: int) -> dict[str, Any]:
    """A spec change the children show: the API's rate limit (its ConfigMap and every
    pod's spec hash) and a step's replicas (its Deployment)."""
    edited = copy.deepcopy(body)
    edited["spec"].setdefault("api", {})["rateLimit"] = 10 + round_
    step = edited["spec"]["steps"][0]
    step.pop("autoscaling", None)
    step["replicas"] = 1 + round_ % 3
    return edited


def test_apiserver_restarted_twice_under_the_operator_converges_to_the_final_spec(
    operator_crds: KubeControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    namespace = f"fmar-{secrets.token_hex(4)}"
    cluster.create_namespace(namespace)
    (document,) = pipeline_documents(SKETCH)
    body = for_namespace(document, namespace)
    name = body["metadata"]["name"]
    port = free_port()
    log = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMILL_")}
    env["FLOWMILL_RESYNC_SECONDS"] = "2"
    # The render the test expects is TEST_RENDER's: its Prometheus, given to the API.
    assert TEST_RENDER.prometheus_url is not None
    env["FLOWMILL_PROMETHEUS_URL"] = TEST_RENDER.prometheus_url
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowmill.cli", "operator",
             "--kubeconfig", str(operator_crds.kubeconfig), "-n", namespace,
             "--liveness", f"http://127.0.0.1:{port}/healthz",
             "--image", TEST_IMAGE, "--default-kafka-cluster", "events"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def alive() -> None:
        assert process.poll() is None, f"the operator exited:\n{log.read_text()[-3000:]}"

    def healthy() -> bool:
        alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    killed = False
    try:
        wait_for(healthy, 90, "the operator's liveness endpoint", interval=0.2)
        cluster.create_pipeline(body)
        final = body
        for round_ in (1, 2):
            # An edit the operator is reconciling when its apiserver dies.
            final = _edit(body, round_)
            cluster.patch_pipeline(namespace, name, final["spec"])
            time.sleep(0.2 * round_)
            operator_crds.kill_apiserver()
            killed = True
            time.sleep(DOWN_S)
            alive()
            operator_crds.restart_apiserver()
            killed = False
        # And one more edit right after the second restart.
        final = _edit(body, 3)
        cluster.patch_pipeline(namespace, name, final["spec"])

        want = expected(final)
        seen: dict[str, Any] = {}

        def converged() -> bool:
            seen["extra or missing"] = live_children(cluster, final) ^ keys(want)
            seen["differences"] = _differences(cluster, want)[:5]
            return not seen["extra or missing"] and not seen["differences"]

        try:
            wait_for(converged, 60, "the children of the final spec", interval=0.5)
        except TimeoutError as err:
            raise AssertionError(f"{err}: {seen}\n{log.read_text()[-2000:]}") from None
        alive()
        ready = make_ready(cluster, final, timeout=60)
        assert ready["reason"] == "AllReady"
        # Exactly one of each: the rendered names, nothing else carrying the label.
        assert live_children(cluster, final) == keys(want)
        deployments = cluster.apps.list_namespaced_deployment(
            namespace, label_selector=f"{naming.PIPELINE_LABEL}={name}"
        ).items
        assert sorted(d.metadata.name for d in deployments) == sorted(
            k[2] for k in keys(want) if k[0] == "Deployment"
        )
        pipeline = cluster.pipeline(namespace, name)
        assert pipeline["status"]["observedGeneration"] == pipeline["metadata"]["generation"]
        assert healthy(), "the operator's liveness after both restarts"
        delete_pipelines(cluster, namespace)
    finally:
        if killed:
            operator_crds.restart_apiserver()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()[-3000:]
    # The session's control plane is healthy for the tests after this one.
    assert operator_crds.kubectl("get", "--raw", "/readyz") == "ok"


def _differences(cluster: Cluster, want: list[Any]) -> list[str]:
    return [d for manifest in want for d in contains(manifest, read(cluster, manifest))]
