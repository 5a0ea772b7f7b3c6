"""The renderer on its own: Pipeline -> manifests, no cluster."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import create_model

from flowmill.manifest import load_pipelines, parse_pipeline
from flowmill.spec import (
    API_PORT,
    ENV_BOOTSTRAP_SERVERS,
    ENV_REDIS_URL,
    WORKER_METRICS_PORT,
    Pipeline,
    changelog_topic,
    consumer_group,
)
from flowmill_operator import naming
from flowmill_operator.render import Manifest, RenderError, render
from flowmill_operator.render.config import spec_hash
from flowmill_operator.settings import RenderSettings
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import ROOT, example_files, example_ids

SKETCH = ROOT / "tests" / "data" / "design_sketch.yaml"
FULL = ROOT / "tests" / "data" / "full_features.yaml"
SETTINGS = TEST_RENDER


def load(path: Path) -> Pipeline:
    return load_pipelines(path)[0]


def edited(path: Path, edit: Any) -> Pipeline:
    document = yaml.safe_load(path.read_text())
    edit(document)
    return parse_pipeline(document)


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


@pytest.mark.parametrize("path", example_files(), ids=example_ids())
def test_every_example_renders_a_complete_set(path: Path) -> None:
    for pipeline in load_pipelines(path):
        out = render(pipeline, SETTINGS, uid="00000000-0000-0000-0000-000000000001")
        names = {(m["kind"], m["metadata"]["name"]) for m in out.manifests}
        assert len(names) == len(out.manifests), "no child is rendered twice"
        p = pipeline.name
        assert ("ConfigMap", naming.config_map(p)) in names
        for source in pipeline.spec.sources:
            assert ("Deployment", naming.source_deployment(p, source.name)) in names
        for step in pipeline.spec.steps:
            assert ("Deployment", naming.step_deployment(p, step.name)) in names
            if step.autoscaling:
                kind = step.autoscaling.kind or SETTINGS.autoscaler
                expected = "HorizontalPodAutoscaler" if kind == "hpa" else "ScaledObject"
                assert (expected, naming.step_deployment(p, step.name)) in names
        if pipeline.spec.kafka.cluster:
            topics = by_kind(out.manifests, "KafkaTopic")
            declared = {t["spec"]["topicName"] for t in topics.values()}
            assert {t.name for t in pipeline.spec.topics} <= declared
        if pipeline.spec.api.enabled:
            assert ("Service", naming.api_deployment(p)) in names
        for manifest in out.manifests:
            labels = manifest["metadata"]["labels"]
            assert labels[naming.PIPELINE_LABEL] == p
            assert labels[naming.MANAGED_BY_LABEL] == naming.MANAGER


@pytest.mark.parametrize("path", example_files(), ids=example_ids())
def test_config_map_holds_the_normalized_spec(path: Path) -> None:
    for pipeline in load_pipelines(path):
        out = render(pipeline, SETTINGS)
        text = by_kind(out.manifests, "ConfigMap")[naming.config_map(pipeline.name)]["data"][
            "pipeline.yaml"
        ]
        # What workers load is the very Pipeline the operator validated.
        reread = parse_pipeline(yaml.safe_load(text))
        assert reread.spec == pipeline.spec
        assert reread.name == pipeline.name


def test_deployments_are_hardened_probed_and_scraped() -> None:
    out = render(load(SKETCH), SETTINGS)
    for deployment in by_kind(out.manifests, "Deployment").values():
        template = deployment["spec"]["template"]
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container["image"] == SETTINGS.image
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        port = container["ports"][0]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port["containerPort"])
        assert annotations[naming.SPEC_HASH_ANNOTATION] == out.spec_hash
        # The read-only root needs a writable /tmp, and the spec is mounted read-only.
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[naming.CONFIG_MOUNT]["readOnly"] is True
        assert "/tmp" in mounts
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items()


def test_worker_and_api_command_lines() -> None:
    pipeline = load(SKETCH)
    deployments = by_kind(render(pipeline, SETTINGS).manifests, "Deployment")
    step = deployments["trip-metrics-step-by-region"]["spec"]["template"]["spec"]["containers"][0]
    assert step["command"] == ["flowmill"]
    assert step["args"] == ["worker", "--pipeline", naming.PIPELINE_FILE, "--step", "by-region"]
    assert step["ports"][0]["containerPort"] == WORKER_METRICS_PORT
    env = {e["name"]: e for e in step["env"]}
    assert env[ENV_BOOTSTRAP_SERVERS]["value"] == "events-kafka-bootstrap:9092"
    assert env[ENV_REDIS_URL]["value"] == "redis://redis:6379/0"
    source = deployments["trip-metrics-source-replay"]["spec"]["template"]["spec"]["containers"][0]
    assert source["args"][-2:] == ["--source", "replay"]
    api = deployments["trip-metrics-api"]["spec"]["template"]["spec"]["containers"][0]
    # All addresses: the kubelet probes, and the Service forwards to, the pod's IP.
    assert api["args"] == [
        "api",
        "--pipeline",
        naming.PIPELINE_FILE,
        "--port",
        str(API_PORT),
        "--host",
        "0.0.0.0",
        # The operator's connection settings, by default the API's own defaults.
        "--header-timeout",
        "10",
        "--max-connections",
        "2000",
        "--stop-grace",
        "20",
    ]


def test_api_connection_flags_come_from_the_spec_and_the_operator_settings() -> None:
    """spec.api.trustedProxies (how this API is exposed) and the operator's limits reach
    the API's argv, and mean there what `flowmill api` reads."""
    from flowmill.cli import build_parser

    proxies = ["10.244.0.0/16", "192.168.7.3", "fd00::/8"]
    pipeline = edited(SKETCH, lambda d: d["spec"].setdefault("api", {}).update(
        trustedProxies=proxies))  # fmt: skip
    settings = SETTINGS.model_copy(
        update={
            "api_header_timeout_seconds": 2.5,
            "api_max_connections": 300,
            "api_stop_grace_seconds": 45,
        }
    )
    api = by_kind(render(pipeline, settings).manifests, "Deployment")["trip-metrics-api"]
    pod = api["spec"]["template"]["spec"]
    args = build_parser().parse_args(pod["containers"][0]["args"])
    assert args.trusted_proxies == "10.244.0.0/16,192.168.7.3,fd00::/8"
    assert (args.header_timeout, args.max_connections, args.stop_grace) == (2.5, 300, 45)
    # The kubelet waits past the API's own grace before its SIGKILL.
    assert pod["terminationGracePeriodSeconds"] == 45 + 10
    # Without proxies in the spec there is no flag: the API believes no X-Forwarded-For.
    plain = by_kind(render(load(SKETCH), settings).manifests, "Deployment")["trip-metrics-api"]
    assert "--trusted-proxies" not in plain["spec"]["template"]["spec"]["containers"][0]["args"]


def test_trusted_proxies_must_be_networks() -> None:
    from flowmill.manifest import PipelineInvalid

    def bad(d: dict[str, Any]) -> None:
        d["spec"].setdefault("api", {})["trustedProxies"] = ["10.0.0.0/8", "10.0.0.1/8", "proxy"]

    with pytest.raises(PipelineInvalid) as err:
        edited(SKETCH, bad)
    text = str(err.value)
    assert "spec.api.trustedProxies[1]: '10.0.0.1/8' is not an IP address or a network" in text
    assert "spec.api.trustedProxies[2]: 'proxy'" in text
    assert "trustedProxies[0]" not in text


def test_redis_secret_ref_and_s3_credentials_come_from_secrets() -> None:
    deployments = by_kind(render(load(FULL), SETTINGS).manifests, "Deployment")
    state = deployments["everything-step-station-state"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in state["containers"][0]["env"]}
    assert env[ENV_REDIS_URL]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-url",
        "key": "url",
    }
    # Strimzi's bootstrap Service in the Kafka namespace.
    assert env[ENV_BOOTSTRAP_SERVERS]["value"] == "events-kafka-bootstrap.kafka.svc:9092"
    lake = deployments["everything-step-station-lake"]["spec"]["template"]["spec"]
    assert {"name": "lake", "mountPath": "/lake/stations"} in lake["containers"][0]["volumeMounts"]


def test_replicas_left_out_only_when_an_autoscaler_owns_them() -> None:
    out = render(load(FULL), SETTINGS)
    deployments = by_kind(out.manifests, "Deployment")
    assert "replicas" not in deployments["everything-step-daily-kpis"]["spec"]  # KEDA
    assert deployments["everything-step-station-state"]["spec"]["replicas"] == 1
    assert deployments["everything-api"]["spec"]["replicas"] == 1
    sketch = by_kind(render(load(SKETCH), SETTINGS).manifests, "Deployment")
    assert "replicas" not in sketch["trip-metrics-step-by-region"]["spec"]  # HPA
    assert "replicas" not in sketch["trip-metrics-api"]["spec"]  # API HPA on CPU


def test_step_hpa_scales_on_consumer_lag() -> None:
    out = render(load(SKETCH), SETTINGS)
    hpa = by_kind(out.manifests, "HorizontalPodAutoscaler")["trip-metrics-step-by-region"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "trip-metrics-step-by-region",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "flowmill_consumer_lag",
        "selector": {"matchLabels": {"pipeline": "trip-metrics", "step": "by-region"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "5000"}
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    api = by_kind(out.manifests, "HorizontalPodAutoscaler")["trip-metrics-api"]
    assert api["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 70,
    }
    assert (api["spec"]["minReplicas"], api["spec"]["maxReplicas"]) == (2, 10)


def test_max_replicas_never_exceed_input_partitions() -> None:
    def ask_for_twenty(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["autoscaling"]["maxReplicas"] = 20

    out = render(edited(SKETCH, ask_for_twenty), SETTINGS)
    hpa = by_kind(out.manifests, "HorizontalPodAutoscaler")["trip-metrics-step-by-region"]
    assert hpa["spec"]["maxReplicas"] == 6
    scale = out.scales["by-region"]
    assert scale.max_replicas == 6
    assert "capped at the 6 partitions of topic trips" in scale.message

    def fixed_ten(doc: dict[str, Any]) -> None:
        del doc["spec"]["steps"][0]["autoscaling"]
        doc["spec"]["steps"][0]["replicas"] = 10

    fixed = render(edited(SKETCH, fixed_ten), SETTINGS)
    assert (
        by_kind(fixed.manifests, "Deployment")["trip-metrics-step-by-region"]["spec"]["replicas"]
        == 6
    )


def test_keda_alternative_per_step_and_operator_wide() -> None:
    out = render(load(FULL), SETTINGS)
    scaled = by_kind(out.manifests, "ScaledObject")["everything-step-daily-kpis"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "everything-step-daily-kpis"
    assert scaled["spec"]["maxReplicaCount"] == 6  # 12 asked, trips has 6 partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == consumer_group("everything", "daily-kpis")
    assert trigger["metadata"]["topic"] == "trips"
    assert trigger["metadata"]["lagThreshold"] == "2000"
    # Operator-wide KEDA: the sketch's step (no kind) becomes a ScaledObject, no HPA.
    keda = render(load(SKETCH), SETTINGS.model_copy(update={"autoscaler": "keda"}))
    assert "trip-metrics-step-by-region" in by_kind(keda.manifests, "ScaledObject")
    assert "trip-metrics-step-by-region" not in by_kind(keda.manifests, "HorizontalPodAutoscaler")

    # Per Pipeline, by annotation.
    def annotate(doc: dict[str, Any]) -> None:
        doc["metadata"]["annotations"] = {naming.AUTOSCALER_ANNOTATION: "keda"}

    annotated = render(edited(SKETCH, annotate), SETTINGS)
    assert "trip-metrics-step-by-region" in by_kind(annotated.manifests, "ScaledObject")

    def misspell(doc: dict[str, Any]) -> None:
        doc["metadata"]["annotations"] = {naming.AUTOSCALER_ANNOTATION: "kedah"}

    with pytest.raises(RenderError) as caught:
        render(edited(SKETCH, misspell), SETTINGS)
    assert caught.value.errors[0].path == "metadata.annotations[flowmill.dev/autoscaler]"


def test_hpa_cannot_scale_to_zero_keda_can() -> None:
    def zero(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["autoscaling"]["minReplicas"] = 0

    hpa = render(edited(SKETCH, zero), SETTINGS)
    assert (
        by_kind(hpa.manifests, "HorizontalPodAutoscaler")["trip-metrics-step-by-region"]["spec"][
            "minReplicas"
        ]
        == 1
    )
    assert "needs KEDA" in hpa.scales["by-region"].message
    keda = render(edited(SKETCH, zero), SETTINGS.model_copy(update={"autoscaler": "keda"}))
    assert (
        by_kind(keda.manifests, "ScaledObject")["trip-metrics-step-by-region"]["spec"][
            "minReplicaCount"
        ]
        == 0
    )


def test_topics_strimzi_version_cluster_label_and_join_changelog() -> None:
    out = render(
        load(FULL), SETTINGS.model_copy(update={"strimzi_api_version": "kafka.strimzi.io/v1beta2"})
    )
    topics = by_kind(out.manifests, "KafkaTopic")
    for topic in topics.values():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "events"
        assert topic["metadata"]["namespace"] == "kafka"  # spec.kafka.namespace
    dlq = topics["everything-dlq"]["spec"]
    assert dlq == {
        "topicName": "dlq",
        "partitions": 1,
        "replicas": 1,
        "config": {"retention.ms": "604800000", "cleanup.policy": "delete"},
    }
    pending = next(
        t
        for t in topics.values()
        if t["spec"]["topicName"] == changelog_topic("everything", "join-trips")
    )
    # Same partitions as the join's input, compacted: it is a changelog of open pairs.
    assert pending["spec"]["partitions"] == 6
    assert pending["spec"]["config"] == {"cleanup.policy": "compact"}
    assert pending["metadata"]["labels"][naming.STEP_LABEL] == "join-trips"


def test_owner_references_only_within_the_namespace() -> None:
    uid = "11111111-2222-3333-4444-555555555555"
    out = render(load(FULL), SETTINGS, namespace="data", uid=uid)
    for manifest in out.manifests:
        refs = manifest["metadata"].get("ownerReferences")
        if manifest["metadata"]["namespace"] == "data":
            assert refs == [naming.owner_reference("everything", uid)]
        else:  # topics in the Kafka namespace: the finalizer deletes them
            assert manifest["kind"] == "KafkaTopic" and refs is None
    assert all(
        "ownerReferences" not in m["metadata"] for m in render(load(FULL), SETTINGS).manifests
    )


def test_spec_hash_follows_what_workers_compute_not_scaling() -> None:
    base = render(load(SKETCH), SETTINGS).spec_hash

    def window(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["window"]["size"] = "5m"

    def scaling(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["autoscaling"]["maxReplicas"] = 3
        doc["spec"]["api"]["replicas"] = 5

    assert render(edited(SKETCH, window), SETTINGS).spec_hash != base
    assert render(edited(SKETCH, scaling), SETTINGS).spec_hash == base
    assert render(load(SKETCH), SETTINGS).spec_hash == base  # deterministic


def test_spec_hash_leaves_defaults_out() -> None:
    """An operator upgrade that adds a field whose default is the old behaviour (as
    `sink.kafka.timestamp` was added) keeps every Pipeline's hash, so no pods roll; a
    default written out hashes as if omitted; a value that differs changes it."""
    pipeline = load(SKETCH)
    base = spec_hash(pipeline, "default")
    spec_model = type(pipeline.spec)
    upgraded_model = create_model(
        "UpgradedSpec", __base__=spec_model, future_option=(str, "as before")
    )
    upgraded = pipeline.model_copy(
        update={"spec": upgraded_model.model_validate(pipeline.spec.to_manifest())}
    )
    assert upgraded.spec.future_option == "as before"  # type: ignore[attr-defined]
    assert spec_hash(upgraded, "default") == base

    def written_out(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["sink"]["redis"]["publish"] = True  # the default

    def changed(doc: dict[str, Any]) -> None:
        doc["spec"]["steps"][0]["sink"]["redis"]["publish"] = False

    assert spec_hash(edited(SKETCH, written_out), "default") == base
    assert spec_hash(edited(SKETCH, changed), "default") != base


def test_cluster_only_requirements_name_their_field() -> None:
    def no_kafka(doc: dict[str, Any]) -> None:
        doc["spec"]["kafka"] = {}

    def no_redis(doc: dict[str, Any]) -> None:
        doc["spec"]["redis"] = {}

    bare = RenderSettings()
    with pytest.raises(RenderError) as caught:
        render(edited(SKETCH, no_kafka), bare)
    assert [e.path for e in caught.value.errors] == ["spec.kafka"]
    with pytest.raises(RenderError) as caught:
        render(edited(SKETCH, no_redis), bare)
    assert [e.path for e in caught.value.errors] == ["spec.steps[0].sink.redis"]


def test_platform_defaults_fill_an_empty_kafka_and_redis() -> None:
    def local_only(doc: dict[str, Any]) -> None:
        doc["spec"]["kafka"] = {}
        doc["spec"]["redis"] = {}

    settings = RenderSettings(
        default_kafka_cluster="events",
        default_kafka_namespace="kafka",
        default_redis_url="redis://shared:6379/0",
    )
    out = render(edited(SKETCH, local_only), settings, namespace="team")
    topics = by_kind(out.manifests, "KafkaTopic")
    assert {t["metadata"]["namespace"] for t in topics.values()} == {"kafka"}
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics.values()} == {"events"}
    step = by_kind(out.manifests, "Deployment")["trip-metrics-step-by-region"]
    env = {e["name"]: e["value"] for e in step["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {
        ENV_BOOTSTRAP_SERVERS: "events-kafka-bootstrap.kafka.svc:9092",
        ENV_REDIS_URL: "redis://shared:6379/0",
    }

    # A Pipeline with a Kafka of its own keeps it, and manages its topics itself.
    def own_brokers(doc: dict[str, Any]) -> None:
        doc["spec"]["kafka"] = {"bootstrapServers": "mine:9092"}

    own = render(edited(SKETCH, own_brokers), settings)
    assert not by_kind(own.manifests, "KafkaTopic")


def test_pod_disruption_budgets_and_pod_monitor_when_asked() -> None:
    assert not by_kind(render(load(SKETCH), SETTINGS).manifests, "PodDisruptionBudget")

    def annotate(doc: dict[str, Any]) -> None:
        doc["metadata"]["annotations"] = {naming.PDB_ANNOTATION: "true"}

    pdbs = by_kind(render(edited(SKETCH, annotate), SETTINGS).manifests, "PodDisruptionBudget")
    assert set(pdbs) == {"trip-metrics-step-by-region", "trip-metrics-api"}
    assert pdbs["trip-metrics-api"]["spec"]["maxUnavailable"] == 1
    settings = SETTINGS.model_copy(update={"pod_disruption_budgets": True, "pod_monitor": True})
    out = render(load(SKETCH), settings)
    assert len(by_kind(out.manifests, "PodDisruptionBudget")) == 2
    monitor = by_kind(out.manifests, "PodMonitor")["trip-metrics"]
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert ports == {"metrics", "http"}


def test_api_can_be_disabled() -> None:
    def disable(doc: dict[str, Any]) -> None:
        doc["spec"]["api"] = {"enabled": False}

    out = render(edited(SKETCH, disable), SETTINGS)
    assert not by_kind(out.manifests, "Service")
    assert "trip-metrics-api" not in by_kind(out.manifests, "Deployment")


def test_rendering_does_not_mutate_or_share_state() -> None:
    pipeline = load(FULL)
    first = render(pipeline, SETTINGS).manifests
    snapshot = copy.deepcopy(first)
    first[3]["spec"]["partitions"] = 999
    deployment = next(m for m in first if m["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert render(pipeline, SETTINGS).manifests == snapshot


def test_paused_scales_every_worker_to_zero_and_keeps_the_pods_the_same() -> None:
    """spec.paused: sources and steps at replicas 0, no autoscaler to scale them back up,
    the API serving; resuming renders what was there before, the same pod templates
    (no rollout), and status says Paused."""
    from flowmill_operator.status import pipeline_status
    from tests.operator.test_status import all_ready

    def pause(doc: dict[str, Any]) -> None:
        doc["spec"]["paused"] = True

    for path in (FULL, SKETCH):
        running, paused = render(load(path), SETTINGS), render(edited(path, pause), SETTINGS)
        deployments = by_kind(paused.manifests, "Deployment")
        workers = {n: d for n, d in deployments.items() if not n.endswith("-api")}
        assert workers and all(d["spec"]["replicas"] == 0 for d in workers.values())
        api = by_kind(running.manifests, "Deployment")[naming.api_deployment(load(path).name)]
        assert deployments[naming.api_deployment(load(path).name)] == api
        kinds = {m["kind"] for m in paused.manifests}
        assert not kinds & {"ScaledObject", "TriggerAuthentication"}
        assert {
            m["spec"]["scaleTargetRef"]["name"]
            for m in paused.manifests
            if m["kind"] == "HorizontalPodAutoscaler"
        } <= {naming.api_deployment(load(path).name)}
        assert paused.spec_hash == running.spec_hash
        before = by_kind(running.manifests, "Deployment")
        for name, d in workers.items():
            assert d["spec"]["template"] == before[name]["spec"]["template"]
        assert all(s.replicas == 0 and s.autoscaler is None for s in paused.scales.values())
        pipeline = edited(path, pause)
        status = pipeline_status(
            pipeline,
            paused,
            all_ready(paused),
            namespace="default",
            generation=2,
            previous={},
            prune_errors=[],
        )
        assert status["phase"] == "Paused"
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert ready["status"] == "True", ready
        assert (
            pipeline_status(
                load(path),
                running,
                all_ready(running),
                namespace="default",
                generation=2,
                previous={},
                prune_errors=[],
            )["phase"]
            == "Running"
        )


def test_replay_holds_its_step_at_zero_and_renders_the_reset_job() -> None:
    """spec.replay: the step's Deployment at 0 with no autoscaler, the others as they
    were; a Job running `flowmill replay-reset` in the step's own pod (env and secret
    references, volumes, resources: the operator reads no Secrets, the Job reaches Kafka
    and Redis as the workers do); no rollout. Once status says the id succeeded, the
    render is the one without a request. Steps a replay cannot reset are refused."""
    from flowmill.manifest import PipelineInvalid
    from flowmill_operator.status import pipeline_status
    from tests.operator.test_status import all_ready

    def replay(**request: Any) -> Any:
        def edit(doc: dict[str, Any]) -> None:
            doc["spec"]["replay"] = request

        return edit

    running = render(load(FULL), SETTINGS)
    pipeline = edited(FULL, replay(id="fix-1", step="daily-kpis", fromOffset=5))
    replaying = render(pipeline, SETTINGS)
    step = naming.step_deployment("everything", "daily-kpis")
    deployments = by_kind(replaying.manifests, "Deployment")
    assert deployments[step]["spec"]["replicas"] == 0
    assert replaying.scales["daily-kpis"].autoscaler is None
    assert not any(
        m["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
        and m["spec"]["scaleTargetRef"]["name"] == step
        for m in replaying.manifests
    )
    before = by_kind(running.manifests, "Deployment")
    for name, d in deployments.items():
        assert d["spec"]["template"] == before[name]["spec"]["template"]
        if name != step:
            assert d == before[name]
    assert replaying.spec_hash == running.spec_hash
    (job,) = by_kind(replaying.manifests, "Job").values()
    assert job["metadata"]["name"] == naming.replay_job("everything", "daily-kpis", "fix-1")
    assert job["metadata"]["name"] != naming.replay_job("everything", "daily-kpis", "fix-2")
    names = [m["metadata"]["name"] for m in replaying.manifests]
    assert names.index(job["metadata"]["name"]) > names.index(step)
    pod, worker_pod = job["spec"]["template"]["spec"], before[step]["spec"]["template"]["spec"]
    (container,), (worker,) = pod["containers"], worker_pod["containers"]
    assert container["args"] == [
        "replay-reset",
        "--pipeline",
        naming.PIPELINE_FILE,
        "--step",
        "daily-kpis",
        "--from-offset",
        "5",
    ]
    for key in ("image", "env", "volumeMounts", "resources", "securityContext"):
        assert container[key] == worker[key], key
    assert {
        "name": "FLOWMILL_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-url", "key": "url"}},
    } in container["env"]
    assert pod["volumes"] == worker_pod["volumes"]
    assert pod["restartPolicy"] == "Never" and "ports" not in container
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[naming.COMPONENT_LABEL] == "replay" and naming.STEP_LABEL not in labels
    assert naming.SPEC_HASH_ANNOTATION not in job["spec"]["template"]["metadata"].get(
        "annotations", {}
    )

    status = pipeline_status(
        pipeline,
        replaying,
        all_ready(replaying),
        namespace="data",
        generation=2,
        previous={},
        prune_errors=[],
    )
    assert status["phase"] == "Replaying"
    assert status["replay"]["phase"] == "Replaying"
    assert {c["type"]: c for c in status["conditions"]}["Ready"]["status"] == "True"

    done = render(pipeline, SETTINGS, replayed="fix-1")
    assert [m for m in done.manifests if m["kind"] != "ConfigMap"] == [
        m for m in running.manifests if m["kind"] != "ConfigMap"
    ]
    timed = edited(FULL, replay(id="t", step="daily-kpis", **{"from": "2025-08-15T10:00:00Z"}))
    (job,) = by_kind(render(timed, SETTINGS).manifests, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == [
        "--from",
        "2025-08-15T10:00:00Z",
    ]

    for step_name, word in (("join-trips", "correlate"), ("station-lake", "Parquet")):
        with pytest.raises(RenderError) as refused:
            render(edited(FULL, replay(id="x", step=step_name, fromOffset=0)), SETTINGS)
        (error,) = refused.value.errors
        assert error.path == "spec.replay.step" and word in error.message
    with pytest.raises(PipelineInvalid) as invalid:
        edited(FULL, replay(id="x", step="nope", fromOffset=0))
    assert "spec.replay.step" in str(invalid.value)
    with pytest.raises(PipelineInvalid):
        edited(FULL, replay(id="x", step="daily-kpis"))
