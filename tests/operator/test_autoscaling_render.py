"""The scaling rule as rendered: the HPA's metrics and behavior, the caps, scale to zero,
and the recording and adapter rules the chart ships for it (checked with promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowmill.manifest import PipelineInvalid
from flowmill_operator.render import render
from flowmill_operator.render.autoscaling import CATCH_UP_METRIC
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import ROOT
from tests.operator.test_render import SKETCH, by_kind, edited

FILES = ROOT / "charts" / "flowmill" / "files"
RECORDING_RULES = FILES / "recording-rules.yaml"
ADAPTER_VALUES = FILES / "prometheus-adapter-values.yaml"
HPA_NAME = "trip-metrics-step-by-region"


def autoscaling(**fields: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["autoscaling"].update(fields)

    return edit


def step_hpa(**fields: Any) -> dict[str, Any]:
    out = render(edited(SKETCH, autoscaling(**fields)), TEST_RENDER)
    return by_kind(out.manifests, "HorizontalPodAutoscaler")[HPA_NAME]


def test_lag_target_is_average_value_lag_per_replica() -> None:
    hpa = step_hpa(lagPerReplica=250)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == TEST_RENDER.lag_metric
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "250"}
    up, down = hpa["spec"]["behavior"]["scaleUp"], hpa["spec"]["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert {"type": "Pods", "value": 4, "periodSeconds": 15} in up["policies"]
    assert down["stabilizationWindowSeconds"] == 300


def test_scale_down_window_comes_from_the_spec() -> None:
    hpa = step_hpa(scaleDownStabilization="20s")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 20

    def keda(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["autoscaling"].update(kind="keda", scaleDownStabilization="2m")

    scaled = by_kind(render(edited(SKETCH, keda), TEST_RENDER).manifests, "ScaledObject")
    spec = scaled[HPA_NAME]["spec"]
    assert spec["cooldownPeriod"] == 120
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120


def test_catch_up_target_adds_a_second_metric() -> None:
    hpa = step_hpa(targetCatchUpSeconds=90)
    lag, catch_up = hpa["spec"]["metrics"]
    assert lag["external"]["metric"]["name"] == TEST_RENDER.lag_metric
    assert catch_up["external"]["metric"] == {
        "name": CATCH_UP_METRIC,
        "selector": {"matchLabels": {"pipeline": "trip-metrics", "step": "by-region"}},
    }
    assert catch_up["external"]["target"] == {"type": "AverageValue", "averageValue": "90"}


def test_min_replicas_zero_needs_keda_or_the_feature_gate() -> None:
    zero = autoscaling(minReplicas=0)
    out = render(edited(SKETCH, zero), TEST_RENDER)
    hpa = by_kind(out.manifests, "HorizontalPodAutoscaler")[HPA_NAME]
    assert hpa["spec"]["minReplicas"] == 1
    assert "HPAScaleToZero" in out.scales["by-region"].message

    gated = render(edited(SKETCH, zero), TEST_RENDER.model_copy(update={"hpa_scale_to_zero": True}))
    hpa = by_kind(gated.manifests, "HorizontalPodAutoscaler")[HPA_NAME]
    assert hpa["spec"]["minReplicas"] == 0
    assert gated.scales["by-region"].message == ""

    keda = render(edited(SKETCH, autoscaling(minReplicas=0, kind="keda")), TEST_RENDER)
    assert by_kind(keda.manifests, "ScaledObject")[HPA_NAME]["spec"]["minReplicaCount"] == 0


def test_scale_down_window_is_bounded_like_the_hpa() -> None:
    with pytest.raises(PipelineInvalid, match="at most 1h"):
        edited(SKETCH, autoscaling(scaleDownStabilization="2h"))


def _adapter_rules() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["external"]
    return {rule["name"]["as"]: rule for rule in rules}


def test_adapter_serves_the_metrics_the_hpa_reads() -> None:
    hpa = step_hpa(targetCatchUpSeconds=60)
    read = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    rules = _adapter_rules()
    assert read <= set(rules)
    for rule in rules.values():
        # Namespaced: an HPA only ever sees the lag of its own namespace's Pipeline.
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    recorded = {
        r["record"]
        for g in yaml.safe_load(RECORDING_RULES.read_text())["groups"]
        for r in g["rules"]
    }
    assert "flowmill:step_catchup_seconds" in recorded
    assert "flowmill:step_catchup_seconds" in rules[CATCH_UP_METRIC]["seriesQuery"]


def _promtool() -> str:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).exists(), "promtool missing: run scripts/provision.sh"
    return promtool


def test_recording_rules_compute_lag_rate_and_catch_up(tmp_path: Path) -> None:
    """promtool's rule unit tests: two workers, one partition reported by both during a
    rebalance (counted once), each consuming 50 events/s."""
    shutil.copy(RECORDING_RULES, tmp_path / RECORDING_RULES.name)
    labels = 'namespace="ns",pipeline="trips",step="by-region",group="g",topic="trips"'
    lag = "flowmill_consumer_lag{" + labels + ',pod="%s",partition="%d"}'
    events = 'flowmill_events_in_total{namespace="ns",pipeline="trips",step="by-region",pod="%s"}'
    step = {"namespace": "ns", "pipeline": "trips", "step": "by-region"}
    tests = {
        "rule_files": [RECORDING_RULES.name],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": lag % ("a", 0), "values": "3000x8"},
                    {"series": lag % ("a", 1), "values": "3000x8"},
                    # partition 1 again, from its new owner: max, not sum
                    {"series": lag % ("b", 1), "values": "2000x8"},
                    {"series": events % "a", "values": "0+750x8"},
                    {"series": events % "b", "values": "0+750x8"},
                ],
                "promql_expr_test": [
                    {
                        "expr": "flowmill:step_lag:sum",
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": _series("flowmill:step_lag:sum", step), "value": 6000}
                        ],
                    },
                    {
                        "expr": "flowmill:step_events_in_per_worker:rate1m",
                        "eval_time": "2m",
                        "exp_samples": [
                            {
                                "labels": _series(
                                    "flowmill:step_events_in_per_worker:rate1m", step
                                ),
                                "value": 50,
                            }
                        ],
                    },
                    # 6000 messages at 50/s per worker: 120 s for one worker; a target of
                    # 60 s then asks for ceil(120 / 60) = 2 workers.
                    {
                        "expr": "flowmill:step_catchup_seconds",
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": _series("flowmill:step_catchup_seconds", step), "value": 120}
                        ],
                    },
                ],
            },
            {
                "interval": "15s",
                # a step that has not consumed anything yet: one event/s assumed
                "input_series": [{"series": lag % ("a", 0), "values": "500x8"}],
                "promql_expr_test": [
                    {
                        "expr": "flowmill:step_catchup_seconds",
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": _series("flowmill:step_catchup_seconds", step), "value": 500}
                        ],
                    }
                ],
            },
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"
