"""The Helm chart: lint, schema, RBAC shapes, alert rules (promtool), and a real install
whose ServiceAccount then runs the operator, which proves the RBAC is enough."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowmill.local import find_binary
from flowmill_operator.render import Manifest
from flowmill_operator.runner import OperatorThread
from tests.harness.kube import KubeControlPlane
from tests.harness.waiting import wait_for
from tests.operator.fixtures import delete_pipelines, operator_settings
from tests.operator.helpers import (
    ROOT,
    Cluster,
    example_files,
    for_namespace,
    pipeline_documents,
)

CHART = ROOT / "charts" / "flowmill"


def helm(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        "HOME": str(tmp),
        "HELM_CACHE_HOME": str(tmp / "cache"),
        "HELM_CONFIG_HOME": str(tmp / "config"),
        "HELM_DATA_HOME": str(tmp / "data"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [str(find_binary("helm")), *args], capture_output=True, text=True, timeout=120, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def template(tmp: Path, *sets: str) -> list[dict[str, Any]]:
    flags = [f for s in sets for f in ("--set", s)]
    out = helm(tmp, "template", "fm", str(CHART), "--namespace", "flowmill-system", *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


ALL_ON = (
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
    "operator.replicas=2",
    "podDisruptionBudgets.enabled=true",
)


def test_chart_lints_with_defaults_and_everything_on(tmp_path: Path) -> None:
    helm(tmp_path, "lint", "--strict", str(CHART))
    helm(tmp_path, "lint", "--strict", str(CHART), *[f for s in ALL_ON for f in ("--set", s)])


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("autoscaling.kind=vpa", "autoscaling.kind"),
        ("kafka.strimziApiVersion=kafka.strimzi.io/v1alpha1", "strimziApiVersion"),
        ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces"),
        ("operator.replicaz=2", "replicaz"),
        # A password would be rendered into every API Deployment.
        ("monitoring.prometheusUrl=http://user:secret@prometheus:9090", "prometheusUrl"),
    ],
)
def test_values_schema_rejects_mistakes(tmp_path: Path, value: str, complaint: str) -> None:
    result = helm(tmp_path, "template", "fm", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_operator_deployment_is_restricted_and_configured(tmp_path: Path) -> None:
    docs = template(
        tmp_path,
        "image.repository=registry.example/flowmill",
        "image.tag=1.2.3",
        "kafka.strimziApiVersion=kafka.strimzi.io/v1beta2",
        "autoscaling.kind=keda",
        "kafka.defaultCluster=events",
        "kafka.topicManagement=admin",
        "monitoring.prometheusUrl=http://prometheus.monitoring.svc:9090",
    )
    (deployment,) = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/flowmill:1.2.3"
    assert container["args"][0] == "operator"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLOWMILL_IMAGE"] == "registry.example/flowmill:1.2.3"
    assert env["FLOWMILL_STRIMZI_API_VERSION"] == "kafka.strimzi.io/v1beta2"
    assert env["FLOWMILL_AUTOSCALER"] == "keda"
    assert env["FLOWMILL_DEFAULT_KAFKA_CLUSTER"] == "events"
    assert env["FLOWMILL_TOPIC_MANAGEMENT"] == "admin"
    assert env["FLOWMILL_PROMETHEUS_URL"] == "http://prometheus.monitoring.svc:9090"
    assert env["FLOWMILL_WATCH_NAMESPACES"] == ""
    assert "FLOWMILL_PEERING" not in env  # one replica: standalone
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_rbac_is_cluster_wide_only_when_watching_everything(tmp_path: Path) -> None:
    wide = template(tmp_path)
    roles = {d["metadata"]["name"]: d for d in find(wide, "ClusterRole")}
    assert set(roles) == {"fm-flowmill-operator", "fm-flowmill-operator-discovery"}
    assert not find(wide, "Role")
    granted = {
        (g, r)
        for rule in roles["fm-flowmill-operator"]["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for needed in [
        ("flowmill.dev", "pipelines"),
        ("flowmill.dev", "pipelines/status"),
        ("apps", "deployments"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("kafka.strimzi.io", "kafkatopics"),
        ("keda.sh", "scaledobjects"),
        ("keda.sh", "triggerauthentications"),
        ("", "events"),
    ]:
        assert needed in granted, needed

    scoped = template(tmp_path, "watchNamespaces={team-a,team-b}", "kafka.topicNamespaces={kafka}")
    assert [r["metadata"]["name"] for r in find(scoped, "ClusterRole")] == [
        "fm-flowmill-operator-discovery"
    ]
    discovery = find(scoped, "ClusterRole")[0]["rules"]
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in discovery)
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(scoped, "Role")}
    assert roles == {
        ("team-a", "fm-flowmill-operator"),
        ("team-b", "fm-flowmill-operator"),
        ("kafka", "fm-flowmill-operator-topics"),
    }
    (deployment,) = find(scoped, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLOWMILL_WATCH_NAMESPACES"] == "team-a,team-b"


def test_replicas_turn_peering_on(tmp_path: Path) -> None:
    docs = template(tmp_path, "operator.replicas=2")
    (deployment,) = find(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLOWMILL_PEERING"] == "fm-flowmill-flowmill-system"
    crds = {d["metadata"]["name"] for d in find(docs, "CustomResourceDefinition")}
    assert crds == {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}


def _rules(tmp_path: Path) -> Path:
    docs = template(tmp_path, "monitoring.prometheusRule.enabled=true")
    (rule,) = find(docs, "PrometheusRule")
    path = tmp_path / "flowmill-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def _promtool() -> str:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).exists(), "promtool missing: run scripts/provision.sh"
    return promtool


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(_rules(tmp_path))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout  # 4 recording rules, 3 alerts


def test_alerts_fire_on_lag_dead_letters_and_stalls(tmp_path: Path) -> None:
    """promtool's rule unit tests: synthetic series in, expected alerts out."""
    rules = _rules(tmp_path)
    series = 'flowmill_consumer_lag{namespace="ns",pipeline="trips",step="by-region",topic="trips",partition="%d"}'
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 2 partitions x 6000 = 12000 > 10000, for 15 minutes
                    {"series": series % 0, "values": "6000x15"},
                    {"series": series % 1, "values": "6000x15"},
                    # events keep flowing (not stalled), 2 dead letters per second
                    {
                        "series": 'flowmill_events_in_total{namespace="ns",pipeline="trips",step="by-region"}',
                        "values": "0+6000x15",
                    },
                    {
                        "series": 'flowmill_events_failed_total{namespace="ns",pipeline="trips",step="by-region"}',
                        "values": "0+120x15",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "FlowmillConsumerLagHigh", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "FlowmillConsumerLagHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ns",
                                    "pipeline": "trips",
                                    "step": "by-region",
                                },
                                "exp_annotations": {
                                    "summary": "Step by-region of Pipeline ns/trips is 12k messages behind",
                                    "description": "Consumer lag has stayed above 10000 messages for 10m. If the step is at its maxReplicas (kubectl get pipeline -o yaml shows status.steps), add partitions to its input topic or make the step cheaper.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "FlowmillDeadLettersRising",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ns",
                                    "pipeline": "trips",
                                    "step": "by-region",
                                },
                                "exp_annotations": {
                                    "summary": "Step by-region of Pipeline ns/trips dead-letters 2 events/s",
                                    "description": "More than 1 events per second have gone to the dead-letter topic for 5m; the reason is in each dead letter's headers.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "14m", "alertname": "FlowmillStepStalled", "exp_alerts": []},
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {"series": series % 0, "values": "500x30"},
                    {
                        "series": 'flowmill_events_in_total{namespace="ns",pipeline="trips",step="by-region"}',
                        "values": "1000x30",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "25m",
                        "alertname": "FlowmillStepStalled",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "namespace": "ns",
                                    "pipeline": "trips",
                                    "step": "by-region",
                                },
                                "exp_annotations": {
                                    "summary": "Step by-region of Pipeline ns/trips has lag but consumed nothing for 10 minutes",
                                    "description": "Check the step's pods (kubectl get pods -l flowmill.dev/step=...) and their logs.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "25m", "alertname": "FlowmillConsumerLagHigh", "exp_alerts": []},
                ],
            },
        ],
    }
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _service_account_kubeconfig(
    control_plane: KubeControlPlane, namespace: str, sa: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest), so
    whatever the operator does with it, the chart's RBAC allowed."""
    token = control_plane.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").strip()
    assert control_plane.kubeconfig is not None
    admin = yaml.safe_load(control_plane.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [
            {"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}
        ],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_chart_installs_and_its_service_account_can_run_the_operator(
    tmp_path: Path, operator_crds: KubeControlPlane, cluster: Cluster
) -> None:
    release = f"fm{secrets.token_hex(3)}"
    system, team, kafka = f"{release}-system", f"{release}-team", f"{release}-kafka"
    for ns in (team, kafka):
        cluster.create_namespace(ns)
    assert operator_crds.kubeconfig is not None
    helm(
        tmp_path, "install", release, str(CHART), "--kubeconfig", str(operator_crds.kubeconfig),
        "--namespace", system, "--create-namespace",
        "--set", f"watchNamespaces={{{team}}}", "--set", f"kafka.topicNamespaces={{{kafka}}}",
        "--set", "operator.replicas=2", "--set", "monitoring.prometheusRule.enabled=true",
        "--set", "monitoring.dashboard.enabled=true",
    )  # fmt: skip
    deployment = cluster.deployment(system, f"{release}-flowmill-operator")
    assert deployment["spec"]["replicas"] == 2
    assert operator_crds.kubectl("get", "prometheusrules", "-n", system, "-o", "name").strip()
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }

    # Run the operator the chart describes, as the chart's ServiceAccount: two replicas
    # with peering; only the higher priority one may act.
    sa_config = _service_account_kubeconfig(
        operator_crds, system, f"{release}-flowmill-operator", tmp_path / "sa.kubeconfig"
    )
    applied: dict[str, int] = {"high": 0, "low": 0}

    def counter(who: str) -> Callable[[Manifest], Any]:
        async def count(manifest: Manifest) -> None:
            applied[who] += 1

        return count

    def settings(priority: int) -> Any:
        return operator_settings(
            sa_config, (team,), peering=env["FLOWMILL_PEERING"], priority=priority
        )

    high = OperatorThread(settings(100), after_apply=counter("high")).start()
    low = OperatorThread(settings(1), after_apply=counter("low")).start()
    try:
        body = for_namespace(next(pipeline_documents(example_files()[1])), team, kafka)
        name = body["metadata"]["name"]
        cluster.create_pipeline(body)
        wait_for(
            lambda: len(cluster.children(team, name)) > 5 and cluster.children(kafka, name),
            15,
            "children made with the chart's RBAC",
        )
        cluster.wait_condition(team, name, "WorkersReady", "False")
        degraded = cluster.condition(team, name, "Degraded")
        assert degraded and degraded["status"] == "False", degraded  # nothing was forbidden
        assert applied["high"] > 0 and applied["low"] == 0, applied
        delete_pipelines(cluster, team)
        assert not cluster.children(kafka, name)
    finally:
        stoppers = [threading.Thread(target=t.stop) for t in (high, low)]
        for s in stoppers:
            s.start()
        for s in stoppers:
            s.join()
    helm(
        tmp_path,
        "uninstall",
        release,
        "--kubeconfig",
        str(operator_crds.kubeconfig),
        "--namespace",
        system,
    )
