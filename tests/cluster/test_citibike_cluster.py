"""Citi Bike on the real node: `kubectl apply` of the cluster variant, whose GBFS feed is a
Deployment and Service of its own (`flowmill gbfs-feed`, the stations from a ConfigMap);
the pollers' pods reach it through the Service, and the station and region tables read
through the API's Service equal the values tests/examples/expected.py computes from the
snapshots the pipeline ingested (read back from its topic).

The node has no cluster DNS, so the pollers are pointed at the feed's ClusterIP instead of
its Service name; everything else is the variant as committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
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
from tests.examples.expected import (
    CITIBIKE_AVAILABILITY_FIELDS,
    citibike_availability,
    citibike_region_minutes,
)
from tests.examples.harness import read_topic, source, step, topic, wait_matching
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.node

NAMESPACE = EXAMPLE_NAMESPACES[2]
FEED = "citibike-gbfs"
FEED_HOST = f"http://{FEED}:8917/"
SNAPSHOTS = 4
PERIOD = 2
# Two pollers, four steps, the API (the feed's Deployment is not the Pipeline's).
DEPLOYMENTS = 7


def test_citibike_on_the_cluster(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    flowmill_release: Release,
    tmp_path: Path,
) -> None:
    assert kube_node.images is not None and kube_node.kafka is not None
    core = k8s_client.CoreV1Api(node_api_client)

    def fast(doc: dict[str, Any]) -> None:
        for name in ("station-information", "station-status"):
            source(doc, name)["httpPoll"]["interval"] = "1s"
        step(doc, "lake")["sink"]["parquet"]["flushInterval"] = "2s"

    example = load("citibike", NAMESPACE, tmp_path, kube_node.images.flowmill, fast)
    feed_map = next(
        d for d in example.docs if d["kind"] == "ConfigMap" and "feed.json" in d["data"]
    )
    feed = json.loads(feed_map["data"]["feed.json"])
    feed.update(period=PERIOD, snapshots=SNAPSHOTS)
    feed_map["data"]["feed.json"] = json.dumps(feed)
    regions = {s["station_id"]: s["region_id"] for s in feed["stations"]}

    # The feed first, to learn its ClusterIP.
    feed_only = tmp_path / "feed.yaml"
    feed_only.write_text(
        yaml.safe_dump_all([d for d in example.docs if d["kind"] != "Pipeline"], sort_keys=False)
    )
    kubectl(kube_node, "apply", "-n", NAMESPACE, "-f", str(feed_only))
    feed_url = f"http://{core.read_namespaced_service(FEED, NAMESPACE).spec.cluster_ip}:8917/"
    for name in ("station-information", "station-status"):
        poll = source(example.pipeline, name)["httpPoll"]
        assert poll["url"].startswith(FEED_HOST), poll["url"]
        poll["url"] = poll["url"].replace(FEED_HOST, feed_url)
    apply(kube_node, example)
    pods = wait_running(node_api_client, example, DEPLOYMENTS)
    print(f"[cluster] citibike: {len(pods)} pods Ready {time_to_answer(example):.1f}s after apply")
    feed_pods = core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/name={FEED}"
    ).items
    assert_restricted(node_api_client, NAMESPACE, pods + feed_pods)

    # The feed's clock starts at the status poller's first poll (then the static feeds'
    # last_updated is that moment); its last snapshot is SNAPSHOTS - 1 periods on.
    status_topic = topic(example.pipeline, "station-status")
    wait_for(
        lambda: read_topic(kube_node.kafka.bootstrap_servers, status_topic),  # type: ignore[union-attr]
        90,
        "the status poller's first snapshot",
    )
    with httpx.Client(base_url=feed_url, timeout=5, trust_env=False) as http:
        info = http.get("gbfs/en/station_information.json").json()
    final = info["last_updated"] + (SNAPSHOTS - 1) * PERIOD

    def ingested() -> list[dict[str, Any]] | None:
        records = read_topic(kube_node.kafka.bootstrap_servers, status_topic)  # type: ignore[union-attr]
        events = [r["event"] for r in records]
        done = sum(e["last_updated"] == final for e in events) == len(regions)
        return events if done else None

    events = wait_for(ingested, 90, "the last snapshot ingested")
    assert len(events) % len(regions) == 0 and len(events) >= 2 * len(regions)

    with api_client_for(core, example) as http:

        def availability() -> dict[Any, dict[str, Any]]:
            page = http.get(
                f"{example.table_path('station_availability')}/entries", params={"limit": 100}
            ).json()
            return {e["key"]: e["value"] for e in page.get("entries", [])}

        wait_matching(
            "station availability",
            availability,
            citibike_availability(events, final),
            exact=set(CITIBIKE_AVAILABILITY_FIELDS),
            timeout=90,
        )
        print(f"[cluster] citibike: exact availability {time_to_answer(example):.1f}s after apply")

        def per_region() -> dict[Any, dict[str, Any]]:
            found: dict[Any, dict[str, Any]] = {}
            for region in set(regions.values()):
                page = http.get(
                    f"{example.table_path('region_availability')}/keys/{region}/windows"
                )
                if page.status_code == 200:
                    for w in page.json()["windows"]:
                        found[(region, w["start"])] = w["values"]
            return found

        wait_matching(
            "region availability per minute",
            per_region,
            citibike_region_minutes(events, regions),
            exact={"reports", "stations", "min_bikes_available", "empty_station_reports"},
            timeout=90,
        )
        stations = http.get(
            f"{example.table_path('stations')}/within",
            params={"min_lat": 40.5, "min_lon": -74.3, "max_lat": 40.9, "max_lon": -73.7},
        ).json()
        assert stations["matched"] == len(regions)

    kubectl(kube_node, "delete", "-n", NAMESPACE, "-f", str(example.path), "--wait=true")
