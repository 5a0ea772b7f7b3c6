"""Operator rows of `make bench`: Pipeline applied -> all its children exist, on a real
etcd + kube-apiserver + kube-controller-manager (tests/harness/kube.py), the operator in
a thread of this process with production settings (30 s resync).

- apply -> children: N Pipelines applied one after another (the next once the previous
  one's children exist), each timed from its create call to the operator's last
  confirmed apply for it (as tests/operator/test_reconcile.py measures);
- convergence: M Pipelines created at once, time until every child of every one exists.
"""

from __future__ import annotations

import secrets
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowmill.manifest import parse_pipeline  # noqa: E402
from flowmill_operator import naming  # noqa: E402
from flowmill_operator.render import Manifest, render  # noqa: E402
from flowmill_operator.runner import OperatorThread  # noqa: E402
from tests.harness.kube import KubeControlPlane  # noqa: E402
from tests.harness.waiting import wait_for  # noqa: E402
from tests.operator import crds  # noqa: E402
from tests.operator.fixtures import (  # noqa: E402
    PIPELINE_CRD,
    TEST_RENDER,
    delete_pipelines,
    operator_settings,
)
from tests.operator.helpers import (  # noqa: E402
    Cluster,
    example_files,
    for_namespace,
    pipeline_documents,
)

CONVERGENCE_LIMIT_S = 300.0
"""Past this, the convergence row says it did not converge."""


def _children(cluster: Cluster, body: dict[str, Any]) -> set[tuple[str, str, str]]:
    return cluster.children(body["metadata"]["namespace"], body["metadata"]["name"])


def _want(body: dict[str, Any]) -> set[tuple[str, str, str]]:
    settings = TEST_RENDER.model_copy(update={"pod_monitor": True})
    manifests: list[Manifest] = render(parse_pipeline(body), settings).manifests
    return {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in manifests}


def measure(sequential: int, at_once: int, log: Any) -> dict[str, Any]:
    (template,) = pipeline_documents(example_files()[0])
    with KubeControlPlane() as kube:
        for crd in crds.ALL:
            kube.install_crd(crd)
        kube.install_crd(PIPELINE_CRD)
        wait_for(lambda: _listable(kube), 60, "the CRDs to serve", interval=0.2)
        from kubernetes import config as k8s_config

        assert kube.kubeconfig is not None
        cluster = Cluster(k8s_config.new_client_from_config(config_file=str(kube.kubeconfig)))
        namespace = f"fmbench-{secrets.token_hex(3)}"
        cluster.create_namespace(namespace)
        done: dict[str, float] = {}
        applied: dict[str, set[tuple[str, str, str]]] = {}

        async def record(manifest: Manifest) -> None:
            meta = manifest["metadata"]
            name = meta["labels"][naming.PIPELINE_LABEL]
            done[name] = time.monotonic()
            applied.setdefault(name, set()).add((manifest["kind"], meta["namespace"], meta["name"]))

        settings = operator_settings(kube.kubeconfig, (namespace,), resync_seconds=30.0)
        timings: list[float] = []
        with OperatorThread(settings, after_apply=record):
            for i in range(sequential):
                body = for_namespace(template, namespace)
                body["metadata"]["name"] = f"seq-{i}"
                want = _want(body)
                name = body["metadata"]["name"]
                started = time.monotonic()
                cluster.create_pipeline(body)
                # Wait on the operator's own hook (each confirmed apply), not by polling
                # the apiserver: polls every few ms would slow the operator they time
                # (same process, one GIL); the children are checked once after.
                wait_for(partial(_covers, applied, name, want), 30, "the applies", interval=0.005)
                timings.append(done[name] - started)
                missing = want - _children(cluster, body)
                assert not missing, f"{name}: applied but missing {sorted(missing)}"
            log(f"operator: {sequential} Pipelines applied one by one")
            bodies = []
            for i in range(at_once):
                body = for_namespace(template, namespace)
                body["metadata"]["name"] = f"bulk-{i}"
                bodies.append((body, _want(body)))
            started = time.monotonic()
            for body, _ in bodies:
                cluster.create_pipeline(body)
            pending = {b["metadata"]["name"]: w for b, w in bodies}
            while pending and time.monotonic() - started < CONVERGENCE_LIMIT_S:
                pending = {n: w for n, w in pending.items() if not _covers(applied, n, w)}
                time.sleep(0.01)
            names = [b["metadata"]["name"] for b, _ in bodies]
            converged = None
            if not pending:  # the last apply's confirmation, not when this loop saw it
                converged = max(done[n] for n in names) - started
                found = cluster.children_by_pipeline(namespace)
                missing = {
                    n: w - found.get(n, set()) for n, (_, w) in zip(names, bodies, strict=True)
                }
                assert not any(missing.values()), f"applied but missing: {missing}"
            log(f"operator: {at_once} Pipelines at once converged in {converged} s")
            delete_pipelines(cluster, namespace)
    timings.sort()
    q = statistics.quantiles(timings, n=100, method="inclusive") if len(timings) > 1 else None
    return {
        "sequential": sequential,
        "apply_to_children_p50_s": q[49] if q else (timings[0] if timings else None),
        "apply_to_children_p99_s": q[98] if q else (timings[0] if timings else None),
        "at_once": at_once,
        "convergence_s": converged,
    }


def _covers(
    applied: dict[str, set[tuple[str, str, str]]], name: str, want: set[tuple[str, str, str]]
) -> bool:
    return want <= applied.get(name, set())


def _listable(kube: KubeControlPlane) -> bool:
    import subprocess

    try:
        kube.kubectl("get", "pipelines,kafkatopics", "-A", timeout=10)
    except subprocess.CalledProcessError:
        return False
    return True
