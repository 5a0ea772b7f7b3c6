"""What the operator renders for a Faust step: the same Deployment as a built-in step's
(pod template, restricted securityContext, probes, metrics port) with the code ConfigMap
mounted and passed as --code-path, the lag HPA capped at the input's partitions, and its
Table's changelog as a KafkaTopic owned like the join changelogs."""

from __future__ import annotations

import copy
from typing import Any

from flowmill.manifest import load_pipelines
from flowmill.spec import FAUST_CODE_MOUNT, faust_changelog_topic
from flowmill_operator import naming
from flowmill_operator.render import render
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import ROOT
from tests.operator.test_render import by_kind

EXAMPLE = ROOT / "k8s" / "examples" / "trip-fraud.yaml"


def _without_code(deployment: dict[str, Any]) -> dict[str, Any]:
    """The pod spec with the step's own parts (name, args, code volume) taken out."""
    pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
    (container,) = pod["containers"]
    container.pop("args")
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "faust-code"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "faust-code"]
    return pod


def test_faust_step_renders_like_a_built_in_step() -> None:
    (pipeline,) = load_pipelines(EXAMPLE)
    out = render(pipeline, TEST_RENDER)
    deployments = by_kind(out.manifests, "Deployment")
    faust = deployments[naming.step_deployment("trip-fraud", "fraud-rules")]
    built_in = deployments[naming.step_deployment("trip-fraud", "validate")]
    assert _without_code(faust) == _without_code(built_in)
    (container,) = faust["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--code-path", FAUST_CODE_MOUNT]
    assert {"name": "faust-code", "mountPath": FAUST_CODE_MOUNT, "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "faust-code", "configMap": {"name": "trip-fraud-code"}} in faust["spec"][
        "template"
    ]["spec"]["volumes"]
    assert "replicas" not in faust["spec"]  # the HPA owns the count

    hpa = by_kind(out.manifests, "HorizontalPodAutoscaler")[
        naming.step_deployment("trip-fraud", "fraud-rules")
    ]
    assert hpa["spec"]["maxReplicas"] == 3  # 6 asked, trips-valid has 3 partitions
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == TEST_RENDER.lag_metric
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "500"}
    # The labels of the worker's flowmill_consumer_lag series (tests/faust/test_faust_worker.py
    # reads them from a running Faust worker, with group = the app id).
    assert metric["external"]["metric"]["selector"] == {
        "matchLabels": {"pipeline": "trip-fraud", "step": "fraud-rules"}
    }

    topics = {t["spec"]["topicName"]: t for t in out.manifests if t["kind"] == "KafkaTopic"}
    changelog = topics[faust_changelog_topic("trip-fraud", "fraud-rules", "rider-trips")]
    assert changelog["spec"]["partitions"] == 3
    assert changelog["spec"]["config"] == {"cleanup.policy": "compact"}
    assert changelog["metadata"]["labels"][naming.STEP_LABEL] == "fraud-rules"
