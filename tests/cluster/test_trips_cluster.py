"""Trips on the real node: `kubectl apply` of the cluster variant; the join of the two
replays and the daily KPIs read through the API's Service equal the values
tests/examples/expected.py computes from the same CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from tests.cluster.examples import (
    api_client_for,
    apply,
    assert_restricted,
    kubectl,
    load,
    time_to_answer,
    wait_running,
)
from tests.cluster.release import EXAMPLE_NAMESPACES, Release
from tests.examples.expected import completed_trips, daily_kpis
from tests.examples.harness import EXAMPLES, close, source, wait_matching
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.node

NAMESPACE = EXAMPLE_NAMESPACES[1]
# Two sources, three steps, the API.
DEPLOYMENTS = 6


def test_trips_on_the_cluster(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    flowmill_release: Release,
    tmp_path: Path,
) -> None:
    assert kube_node.images is not None
    core = k8s_client.CoreV1Api(node_api_client)

    def faster(doc: dict[str, Any]) -> None:
        for name in ("trip-start", "trip-end"):
            source(doc, name)["fileReplay"]["rate"] = 1000

    example = load("trips", NAMESPACE, tmp_path, kube_node.images.flowmill, faster)
    # The variant's ConfigMap holds these same files (k8s/examples/cluster/generate.py).
    trips = completed_trips(EXAMPLES / "data" / "trips")
    assert len(trips) == 970  # 1,000 trips, 30 never end; 10 ends without a start
    expected = daily_kpis(trips)
    apply(kube_node, example)
    pods = wait_running(node_api_client, example, DEPLOYMENTS)
    print(f"[cluster] trips: {len(pods)} pods Ready {time_to_answer(example):.1f}s after apply")
    assert_restricted(node_api_client, NAMESPACE, pods)

    with api_client_for(core, example) as http:

        def served() -> dict[Any, dict[str, Any]]:
            page = http.get(f"{example.table_path('daily_kpis')}/keys/all/windows")
            if page.status_code != 200:
                return {}
            return {("all", w["start"]): w["values"] for w in page.json()["windows"]}

        wait_matching("daily KPIs", served, expected, exact={"trips"}, timeout=120)
        print(f"[cluster] trips: exact KPIs {time_to_answer(example):.1f}s after apply")

        table = f"{example.table_path('trips')}/entries"
        wait_for(
            lambda: http.get(table, params={"limit": 1}).json()["total"] == len(trips),
            60,
            "every completed trip in the trip table",
        )
        sample = trips[len(trips) // 2]
        entry = http.get(f"{table}/{sample['trip_id']}").json()
        assert entry["value"]["pickup_datetime"] == sample["pickup_datetime"]
        assert close(entry["value"]["fare_amount"], float(sample["fare_amount"]))
        assert http.get(f"{table}/0rphan0000000000").status_code == 404

    kubectl(kube_node, "delete", "-n", NAMESPACE, "-f", str(example.path), "--wait=true")
