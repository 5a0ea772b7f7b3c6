"""Autoscaling on lag, measured on the single-node cluster (not a test: it prints a table).

A step on a 4-partition topic (the same Pipeline as tests/cluster/test_autoscaling.py)
gets a burst of events; then a steady load for --steady-minutes. Printed:

- seconds from the lag spike (burst sent) to the HPA's scale-up decision (desiredReplicas > 1);
- seconds until the new pods consume (the group has several members covering every partition);
- peak desired replicas vs expected (min(ceil(lag / lagPerReplica), partitions));
- seconds to drain the burst;
- scale events (changes of desiredReplicas) during the steady load: flapping if more than
  the one or two a settling step needs.

Target: decision <= 45 s, no flapping. It starts its own node, so it must run in a network
namespace of its own (as `scripts/cluster.sh test` gives pytest):

    sudo scripts/cluster.sh run .venv/bin/python benchmarks/autoscaling_bench.py

(`--scale-down-stabilization 20s` reproduces the e2e test's short window.)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client as k8s_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowmill_operator.runner import OperatorThread
from flowmill_operator.settings import OperatorSettings, RenderSettings
from tests.cluster.autoscaled import Step, started
from tests.cluster.test_autoscaling import (
    BURST,
    LAG_PER_REPLICA,
    PARTITIONS,
    STEP,
    apply,
    pipeline_manifest,
)
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode
from tests.harness.waiting import wait_for
from tests.operator.fixtures import PIPELINE_CRD
from tests.workers.harness import produce


def poll_until(step: Step, check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until check(); samples the HPA on the way (Step.watch)."""
    began = time.monotonic()
    while True:
        step.desired()
        if check():
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


async def steady_load(step: Step, bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    """`rate` events per second for `seconds`, in one-second slices, sampling the HPA
    every two seconds meanwhile."""

    async def sample() -> None:
        while True:
            await asyncio.to_thread(step.desired)
            await asyncio.sleep(2.0)

    sampler = asyncio.create_task(sample())
    sent, began = 0, time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            slice_began = time.monotonic()
            count = max(1, int(rate))
            await produce(bootstrap, topic, [{"n": sent + i} for i in range(count)], "n")
            sent += count
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - slice_began)))
    finally:
        sampler.cancel()
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=BURST, help="events in the burst")
    parser.add_argument("--steady-minutes", type=float, default=10.0)
    parser.add_argument(
        "--scale-down-stabilization",
        default=None,
        metavar="DURATION",
        help="the step's scaleDownStabilization (default: the product's default, 5m)",
    )
    args = parser.parse_args()

    node = KubeNode()
    node.start()
    stack = MetricsStack(node)
    thread: OperatorThread | None = None
    namespace = f"bench-{secrets.token_hex(3)}"
    try:
        stack.start()
        assert node.control_plane is not None and node.images is not None
        assert node.kafka is not None and node.redis is not None
        node.control_plane.install_crd(PIPELINE_CRD)
        with node.api_client() as api:
            k8s_client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
            thread = OperatorThread(
                OperatorSettings(
                    render=RenderSettings(
                        image=node.images.flowmill,
                        image_pull_policy="Never",
                        topic_management="admin",
                        default_bootstrap_servers=node.kafka.bootstrap_servers,
                        default_redis_url=node.redis.url,
                    ),
                    namespaces=(namespace,),
                    kubeconfig=str(node.kubeconfig),
                    pod_monitors="never",
                    resync_seconds=5.0,
                )
            ).start()
            name = f"bench-{secrets.token_hex(3)}"
            manifest = pipeline_manifest(name, max_replicas=PARTITIONS)
            scaling = manifest["spec"]["steps"][0]["autoscaling"]
            if args.scale_down_stabilization is None:
                del scaling["scaleDownStabilization"]
            else:
                scaling["scaleDownStabilization"] = args.scale_down_stabilization
            apply(api, namespace, manifest)
            step = Step(node, api, stack, namespace, name, STEP)
            started(step)
            bootstrap = node.kafka.bootstrap_servers
            topic = f"{name}-events"

            spike = time.monotonic()
            asyncio.run(produce(bootstrap, topic, [{"n": i} for i in range(args.burst)], "n"))
            poll_until(step, lambda: step.desired() > 1, 300, "scale-up")
            decision = time.monotonic() - spike
            poll_until(
                step,
                lambda: (
                    len(m := step.members()) > 1
                    and set().union(*m.values()) == set(range(PARTITIONS))
                ),
                300,
                "new pods consuming",
            )
            consuming = time.monotonic() - spike
            poll_until(step, lambda: step.lag() == 0, 900, "drain")
            drained = time.monotonic() - spike
            expected = min(math.ceil(args.burst / LAG_PER_REPLICA), PARTITIONS)
            peak = step.watch.peak
            # One worker's observed rate while the burst drained sets the steady load at
            # about 1.5 workers' worth: the step should settle at 2 and stay there.
            per_worker = args.burst / max(drained - decision, 1.0) / max(peak, 1)
            rate = 1.5 * per_worker
            step.watch.desired.clear()
            steady_began = time.monotonic()
            asyncio.run(steady_load(step, bootstrap, topic, rate, args.steady_minutes * 60))
            values = [d for t, d in step.watch.desired if t >= steady_began]
            changes = [b - a for a, b in itertools.pairwise(values) if a != b]
            events = len(changes)
            # Flapping is a change of direction: up then down (or down then up) again.
            reversals = sum(1 for a, b in itertools.pairwise(changes) if (a > 0) != (b > 0))
            wait_for(lambda: step.lag() == 0, 600, "the steady load to drain", interval=2)
    finally:
        if thread is not None:
            thread.stop()
        stack.stop()
        node.stop()
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| lag spike -> HPA scale-up decision | {decision:.1f} s | <= 45 s |")
    print(f"| lag spike -> new pods consuming | {consuming:.1f} s | |")
    print(f"| peak desired replicas (expected) | {peak} ({expected}) | = expected |")
    print(f"| lag spike -> drained ({args.burst} events) | {drained:.1f} s | |")
    window = args.scale_down_stabilization or "5m (default)"
    print(
        f"| scale events in {args.steady_minutes:g} min of steady load ({rate:.0f} ev/s), "
        f"scale-down window {window} | {events} ({reversals} reversals) | no flapping |"
    )
    if node.leftovers:
        print("the node left this on the host:\n" + "\n".join(node.leftovers), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
