"""Trip fraud on the real node: `kubectl apply` of the cluster variant, the Faust agent's
code mounted from the ConfigMap trip-fraud-code, then the same agent shipped in an image of
its own, then its lag autoscaling acting.

- The served latest flag per rider and the flags per rule and hour, read through the API's
  Service, equal the rules recomputed in plain Python from the same data file
  (tests/faust/harness.py, as under `flowmill run` in tests/faust/test_trip_fraud.py).
- The Pipeline is applied again with spec.image = the agent's image (built FROM the flowmill
  image with the agent's package installed, k8s/examples/faust/Dockerfile, by
  scripts/image.sh trip-fraud) and no faust.code: every pod runs that image, none mounts
  the code, and a copy of the data's trips under other riders' ids is flagged exactly too.
- The Faust step runs with a small CPU limit (250m), so a burst of valid trips produced straight
  to its input builds lag: its HPA (maxReplicas 6 capped at the 3 partitions) wants more
  workers, a second Faust pod becomes Ready and joins the step's consumer group (the Faust
  app id), the lag drains and the group commits the input's end; the burst flags no one,
  so the served flags stay exact.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from kubernetes import client as k8s_client

from tests.cluster.autoscaled import Step, Trace, started
from tests.cluster.examples import (
    api_client_for,
    apply,
    assert_restricted,
    kubectl,
    load,
    time_to_answer,
    wait_running,
)
from tests.cluster.release import EXAMPLE_NAMESPACES, Release, describe_pods
from tests.examples.harness import source, step, topic, wait_matching
from tests.faust.harness import expected_serving, flags_per_rule, latest_flags, valid_trips
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for
from tests.workers.harness import produce

pytestmark = pytest.mark.node

# test_trips_cluster.py deletes its Pipeline (and ConfigMaps) when it ends; node tests run
# one at a time.
NAMESPACE = EXAMPLE_NAMESPACES[1]
# A source, four steps, the API.
DEPLOYMENTS = 6
# images.env's key of the agent's image (scripts/image.sh trip-fraud).
AGENT_IMAGE_KEY = "TRIP_FRAUD_IMAGE"
FAUST_STEP = "fraud-rules"
PARTITIONS = 3
# A Faust worker held to a small CPU limit is far slower than the test's producer (at 100m
# it processed about 30 trips/s on the node, each trip a Table update and so a changelog
# record too; 250m starts new pods faster), so the burst builds a lag that outlasts the
# HPA's reaction and a new pod's start. The lag the HPA reads is the input's end minus the
# group's committed offset (faust_step/lag.py): what the agent has not processed, Faust's
# stream buffer included.
FAUST_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "250m", "memory": "512Mi"},
}
LOAD_RIDERS = 1_500
TRIPS_PER_LOAD_RIDER = 10


def load_trips() -> list[dict[str, Any]]:
    """Valid trips of riders the data file does not have, an hour apart at one pickup: no
    rule flags them (one trip per 10 minutes, no distance)."""
    start = datetime(2025, 9, 2, tzinfo=UTC)
    return [
        {
            "trip_id": f"load-{rider:04d}-{n:02d}",
            "rider_id": f"load_rider_{rider:04d}",
            "requested_at": (start + timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lat": 40.7,
            "lon": -73.9,
            "fare": 10.0,
        }
        for n in range(TRIPS_PER_LOAD_RIDER)
        for rider in range(LOAD_RIDERS)
    ]


def image_copies(trips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same trips, of riders the data file does not have: the agent from the image
    flags them as the data file's riders are flagged."""
    return [
        {**t, "trip_id": f"img-{t['trip_id']}", "rider_id": f"img_{t['rider_id']}"} for t in trips
    ]


def committed_to_the_end(bootstrap: str, group: str, input_topic: str) -> bool:
    """The group's committed offset is the end of every input partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flowmill-cluster-tests")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="flowmill-cluster-tests")
    try:
        committed = admin.list_consumer_group_offsets(group)
        partitions = [TopicPartition(input_topic, p) for p in range(PARTITIONS)]
        ends = consumer.end_offsets(partitions)
    finally:
        admin.close()
        consumer.close()
    return all(tp in committed and committed[tp].offset == ends[tp] for tp in partitions)


def wait_exact_flags(http: Any, example: Any, expected: Any, after: str) -> None:
    """Until the served latest flag per rider and flags per rule and hour are exactly the
    rules recomputed (`after` names the phase in the failure message)."""
    wait_matching(
        f"latest flag per rider {after}",
        lambda: latest_flags(http, example.table_path("flagged_riders")),
        expected.latest,
        exact={"trip_id", "rule"},
        timeout=120,
    )
    wait_matching(
        f"flags per rule and hour {after}",
        lambda: flags_per_rule(http, example.table_path("flags_per_rule")),
        expected.per_rule,
        exact={"flags", "riders"},
        timeout=60,
    )


def test_trip_fraud_on_the_cluster(
    kube_node: KubeNode,
    node_api_client: k8s_client.ApiClient,
    flowmill_release: Release,
    metrics_stack: MetricsStack,
    tmp_path: Path,
) -> None:
    assert kube_node.images is not None and kube_node.kafka is not None
    core = k8s_client.CoreV1Api(node_api_client)
    began = time.monotonic()
    agent_image = kube_node.import_image(AGENT_IMAGE_KEY)
    print(f"[cluster] trip-fraud: {agent_image} imported in {time.monotonic() - began:.1f}s")

    def edit(doc: dict[str, Any]) -> None:
        source(doc, "requests")["fileReplay"]["rate"] = 1000
        step(doc, FAUST_STEP)["resources"] = FAUST_RESOURCES

    example = load("trip-fraud", NAMESPACE, tmp_path, kube_node.images.flowmill, edit)
    # The variant's ConfigMaps hold this same data file and agent (generate.py).
    trips = valid_trips()
    expected = expected_serving(trips)
    assert len(trips) == 222 and len(expected.flags) > 20
    apply(kube_node, example)
    pods = wait_running(node_api_client, example, DEPLOYMENTS)
    print(
        f"[cluster] trip-fraud: {len(pods)} pods Ready {time_to_answer(example):.1f}s after apply"
    )
    assert_restricted(node_api_client, NAMESPACE, pods)
    faust_step = Step(
        kube_node, node_api_client, metrics_stack, NAMESPACE, example.pipeline_name, FAUST_STEP
    )
    (faust_pod,) = [p for p in pods if p.metadata.name.startswith(f"{faust_step.deployment}-")]
    mounted = {v.config_map.name for v in faust_pod.spec.volumes if v.config_map is not None}
    assert "trip-fraud-code" in mounted, f"the agent's ConfigMap is not mounted: {mounted}"

    with api_client_for(core, example) as http:
        wait_exact_flags(http, example, expected, "from the ConfigMap's agent")
        print(f"[cluster] trip-fraud: exact flags {time_to_answer(example):.1f}s after apply")

        # -- the agent from an image of its own ----------------------------------------
        # Every trip processed and committed first (the lag series counts events, not the
        # validate step's transaction markers), so the restarted agent replays none.
        wait_for(lambda: faust_step.lag() == 0, 120, "the Faust step's lag at 0", interval=2)
        example.pipeline["spec"]["image"] = agent_image
        del step(example.pipeline, FAUST_STEP)["faust"]["code"]
        apply(kube_node, example)
        # The image change rolls all six Deployments at once (a surge pod each beside the
        # old one) on a node that shares two cores with the rest of the suite: more time.
        pods = wait_running(
            node_api_client,
            example,
            DEPLOYMENTS,
            timeout=360,
            accept=lambda pod: all(c.image == agent_image for c in pod.spec.containers),
        )
        (faust_pod,) = [p for p in pods if p.metadata.name.startswith(f"{faust_step.deployment}-")]
        mounted = {v.config_map.name for v in faust_pod.spec.volumes if v.config_map is not None}
        assert "trip-fraud-code" not in mounted, f"the image's agent still mounts {mounted}"
        print(f"[cluster] trip-fraud: all pods on {agent_image} {time_to_answer(example):.1f}s")
        bootstrap = kube_node.kafka.bootstrap_servers
        trips_valid = topic(example.pipeline, "trips-valid")
        copies = image_copies(trips)
        asyncio.run(produce(bootstrap, trips_valid, copies, key_field="rider_id"))
        expected = expected_serving(trips + copies)
        assert len(expected.latest) == 2 * len(expected_serving(trips).latest)
        wait_exact_flags(http, example, expected, "from the image's agent too")
        print(f"[cluster] trip-fraud: image's flags exact {time_to_answer(example):.1f}s")

        # -- lag autoscaling of the Faust step ------------------------------------------
        hpa = faust_step.hpa()
        assert hpa is not None and hpa.spec.max_replicas == PARTITIONS  # 6 capped at 3
        started(faust_step)
        assert faust_step.desired() == 1
        burst = load_trips()
        with Trace(faust_step) as trace:
            asyncio.run(produce(bootstrap, trips_valid, burst, key_field="rider_id"))
            trace.mark(f"{len(burst)} valid trips sent to {trips_valid}")
            try:
                wait_for(
                    lambda: faust_step.desired() > 1,
                    120,
                    "the HPA to want more workers",
                    interval=1,
                )
                trace.mark(f"scale-up decided: desired {faust_step.desired()}")
                wait_for(
                    lambda: faust_step.ready() > 1, 180, "a second Faust pod Ready", interval=1
                )
                trace.mark(f"{faust_step.ready()} Faust pods Ready")
                # The new pods joined the step's group (a Faust step's app id is its
                # consumer group, flowmill/spec/topology.py) and own input partitions.
                members = wait_for(
                    lambda: (
                        m
                        if len(m := faust_step.members(trips_valid)) > 1
                        and sum(1 for owned in m.values() if owned) > 1
                        and set().union(*m.values()) == set(range(PARTITIONS))
                        else None
                    ),
                    120,
                    f"the input's partitions spread over members of {faust_step.group}",
                    interval=1,
                )
                trace.mark(f"group {faust_step.group}: {len(members)} members {members}")
                wait_for(lambda: faust_step.lag() == 0, 240, "the lag to drain", interval=2)
                trace.mark("lag drained")
                wait_for(
                    lambda: committed_to_the_end(bootstrap, faust_step.group, trips_valid),
                    60,
                    "the group's offsets committed at the input's end",
                    interval=1,
                )
                trace.mark("committed at the end of every input partition")
            except (TimeoutError, AssertionError) as err:
                raise AssertionError(
                    f"{err}\n{faust_step.diagnosis()}\n{describe_pods(core, NAMESPACE)}"
                ) from None
        assert 2 <= faust_step.watch.peak <= PARTITIONS
        # No burst trip breaks a rule: the served flags are still exactly the expected ones.
        wait_matching(
            "latest flag per rider after the burst",
            lambda: latest_flags(http, example.table_path("flagged_riders")),
            expected.latest,
            exact={"trip_id", "rule"},
            timeout=30,
        )

    kubectl(kube_node, "delete", "-n", NAMESPACE, "-f", str(example.path), "--wait=true")
