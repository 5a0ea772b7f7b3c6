"""Status rules and operator settings, as pure functions (no cluster)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from flowmill.manifest import load_pipelines
from flowmill.settings import ENV_PREFIX
from flowmill_operator import naming
from flowmill_operator.render import Rendered, render
from flowmill_operator.runner import operator_kwargs
from flowmill_operator.settings import (
    OperatorSettings,
    RenderSettings,
)
from flowmill_operator.status import (
    Observation,
    hpa_lag,
    invalid_status,
    merge_conditions,
    pipeline_status,
)
from flowmill_operator.table_state import TableStates
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import example_files

NS = "team"


def sketch() -> tuple[Any, Rendered]:
    pipeline = load_pipelines(example_files()[0])[0]
    return pipeline, render(pipeline, TEST_RENDER, namespace=NS, uid="u")


def live(manifest: dict[str, Any], status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        **manifest,
        "metadata": {**manifest["metadata"], "generation": generation},
        "status": status,
    }


def all_ready(rendered: Rendered) -> Observation:
    seen = Observation()
    for m in rendered.manifests:
        key = (m["kind"], m["metadata"]["namespace"], m["metadata"]["name"])
        if m["kind"] == "KafkaTopic":
            seen.children[key] = live(
                m, {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
            )
        elif m["kind"] == "Deployment":
            replicas = m["spec"].get("replicas", 1)
            seen.children[key] = live(
                {**m, "spec": {**m["spec"], "replicas": replicas}},
                {
                    "observedGeneration": 1,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                },
            )
        else:
            seen.children[key] = live(m, {})
    return seen


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def status_of(
    pipeline: Any, rendered: Rendered, seen: Observation, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    return pipeline_status(
        pipeline,
        rendered,
        seen,
        namespace=NS,
        generation=4,
        previous=previous or {},
        prune_errors=[],
    )


def test_everything_ready_is_ready() -> None:
    pipeline, rendered = sketch()
    status = status_of(pipeline, rendered, all_ready(rendered))
    c = conditions(status)
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == "AllReady"
    assert c["Degraded"]["status"] == "False"
    assert all(x["observedGeneration"] == 4 for x in status["conditions"])
    assert status["stepsReady"] == "1/1"
    assert status["endpoint"] == f"http://trip-metrics-api.{NS}.svc:8000"
    assert status["steps"] == [
        {"name": "by-region", "replicas": 1, "readyReplicas": 1, "maxReplicas": 6}
    ]


def test_table_state_joins_ready_and_degraded_only_when_known() -> None:
    pipeline, rendered = sketch()
    (table,) = [t for _, t in pipeline.tables()]
    seen = all_ready(rendered)
    seen.tables = TableStates(
        unknown="RedisUnreachable", unknown_reason="Redis at r did not answer"
    )
    status = status_of(pipeline, rendered, seen)
    c = conditions(status)
    assert c["TablesExact"]["status"] == "Unknown" and c["Ready"]["reason"] == "AllReady"
    assert status["tablesState"] == "unknown" and c["Degraded"]["status"] == "False"
    rebuilding = {
        "rebuilding": [{"topic": "t", "partition": 0, "until_offset": 9}],
        "incomplete": [],
    }
    seen.tables = TableStates({table: rebuilding})
    c = conditions(status_of(pipeline, rendered, seen))
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "TablesRebuilding"
    assert c["Degraded"]["status"] == "False"
    seen.tables = TableStates({table: None})
    assert status_of(pipeline, rendered, seen)["tablesState"] == "exact"
    seen.tables = None  # no tables: nothing to say
    status = status_of(pipeline, rendered, seen)
    assert conditions(status)["TablesExact"]["reason"] == "NoTables"
    assert "tables" not in {k for k, v in status.items() if v is not None}


def test_pending_topics_and_pods_are_not_degraded() -> None:
    pipeline, rendered = sketch()
    seen = all_ready(rendered)
    for key, obj in seen.children.items():
        if key[0] in ("KafkaTopic", "Deployment"):
            obj["status"] = {}
    c = conditions(status_of(pipeline, rendered, seen))
    assert c["Ready"]["reason"] == "TopicsPending"
    assert c["TopicsReady"]["reason"] == "TopicsPending" and "trips" in c["TopicsReady"]["message"]
    assert c["WorkersReady"]["reason"] == "WorkersPending"
    assert c["ApiReady"]["reason"] == "ApiPending"
    assert c["Degraded"]["status"] == "False"


def test_rejected_topic_and_stuck_rollout_are_degraded() -> None:
    pipeline, rendered = sketch()
    seen = all_ready(rendered)
    topic = next(k for k in seen.children if k[0] == "KafkaTopic")
    seen.children[topic]["status"] = {
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "False", "message": "partitions cannot decrease"}
        ],
    }
    step = ("Deployment", NS, naming.step_deployment("trip-metrics", "by-region"))
    seen.children[step]["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "timed out",
        }
    ]
    c = conditions(status_of(pipeline, rendered, seen))
    assert c["TopicsReady"]["reason"] == "TopicError"
    assert "partitions cannot decrease" in c["TopicsReady"]["message"]
    assert c["WorkersReady"]["reason"] == "RolloutStuck"
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "TopicError"
    assert "timed out" in c["Degraded"]["message"]


def test_an_old_generation_is_not_ready_yet() -> None:
    pipeline, rendered = sketch()
    seen = all_ready(rendered)
    step = ("Deployment", NS, naming.step_deployment("trip-metrics", "by-region"))
    seen.children[step]["metadata"]["generation"] = 2  # new template, not rolled out
    assert conditions(status_of(pipeline, rendered, seen))["WorkersReady"]["status"] == "False"


def test_apply_failure_names_the_missing_kind() -> None:
    pipeline, rendered = sketch()
    seen = all_ready(rendered)
    topic = next(k for k in seen.children if k[0] == "KafkaTopic")
    del seen.children[topic]
    seen.apply_errors[topic] = "KafkaTopic x (kafka.strimzi.io/v1) is not served: install Strimzi"
    c = conditions(status_of(pipeline, rendered, seen))
    assert c["TopicsReady"]["reason"] == "ApplyFailed"
    assert c["Degraded"]["status"] == "True" and "install Strimzi" in c["Degraded"]["message"]


def test_scaled_to_zero_counts_as_ready() -> None:
    pipeline, rendered = sketch()
    seen = all_ready(rendered)
    step = ("Deployment", NS, naming.step_deployment("trip-metrics", "by-region"))
    seen.children[step]["spec"]["replicas"] = 0
    seen.children[step]["status"] = {"observedGeneration": 1}
    assert conditions(status_of(pipeline, rendered, seen))["WorkersReady"]["status"] == "True"


def test_lag_comes_from_the_hpa() -> None:
    pipeline, rendered = sketch()
    seen = all_ready(rendered)
    seen.autoscalers["by-region"] = {
        "status": {
            "currentReplicas": 3,
            "currentMetrics": [
                {"type": "External", "external": {"current": {"averageValue": "1500m"}}}
            ],
        }
    }
    assert hpa_lag(seen.autoscalers["by-region"]) == 4  # 1.5 x 3, rounded
    seen.autoscalers["by-region"]["status"]["currentMetrics"][0]["external"]["current"][
        "averageValue"
    ] = "12k"
    status = status_of(pipeline, rendered, seen)
    assert status["lag"] == 36000 and status["steps"][0]["lag"] == 36000
    assert hpa_lag({"status": {}}) is None
    assert status_of(pipeline, rendered, all_ready(rendered))["lag"] is None


def test_transition_time_moves_only_when_status_changes() -> None:
    before = [{"type": "Ready", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    same = merge_conditions(
        before, [{"type": "Ready", "status": "False", "reason": "X", "message": ""}], 2
    )
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    changed = merge_conditions(
        before, [{"type": "Ready", "status": "True", "reason": "X", "message": ""}], 2
    )
    assert changed[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_invalid_spec_keeps_describing_the_running_generation() -> None:
    previous = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": "t0",
                "observedGeneration": 3,
            },
            {
                "type": "WorkersReady",
                "status": "True",
                "reason": "WorkersReady",
                "lastTransitionTime": "t0",
                "observedGeneration": 3,
            },
        ]
    }
    status = invalid_status("spec.steps[0].filter: invalid CEL", generation=4, previous=previous)
    c = conditions(status)
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "InvalidSpec"
    assert "spec.steps[0].filter" in c["Ready"]["message"]
    assert c["WorkersReady"]["status"] == "True" and c["WorkersReady"]["observedGeneration"] == 3
    assert c["TopicsReady"]["status"] == "Unknown"
    assert c["Degraded"]["status"] == "True"
    assert status["observedGeneration"] == 4


def without_flowmill_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    without_flowmill_env(monkeypatch)
    assert OperatorSettings.from_env().render == RenderSettings()
    for name, value in {
        "FLOWMILL_WATCH_NAMESPACES": "team-a, team-b",
        "FLOWMILL_STRIMZI_API_VERSION": "kafka.strimzi.io/v1beta2",
        "FLOWMILL_AUTOSCALER": "keda",
        "FLOWMILL_IMAGE": "registry.example/flowmill:9",
        "FLOWMILL_PDB": "true",
        "FLOWMILL_POD_MONITORS": "never",
        "FLOWMILL_PEERING": "flowmill",
        "FLOWMILL_PEERING_PRIORITY": "7",
        "FLOWMILL_DEFAULT_KAFKA_CLUSTER": "events",
        "FLOWMILL_DEFAULT_REDIS_URL": "",  # empty, as the chart leaves it: unset
    }.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings.from_env()
    assert settings.namespaces == ("team-a", "team-b") and not settings.clusterwide
    assert settings.render.strimzi_api_version == "kafka.strimzi.io/v1beta2"
    assert settings.render.autoscaler == "keda"
    assert settings.render.image == "registry.example/flowmill:9"
    assert settings.render.pod_disruption_budgets is True
    assert settings.render.default_kafka_cluster == "events"
    assert settings.render.default_redis_url is None
    assert settings.pod_monitors == "never"
    assert operator_kwargs(settings) == {
        "liveness_endpoint": None,
        "namespaces": ["team-a", "team-b"],
        "peering_name": "flowmill",
        "priority": 7,
        "standalone": False,
    }
    # Flags win over the environment.
    flagged = OperatorSettings.from_env(namespaces=(), render=RenderSettings.from_env(image="i:1"))
    assert flagged.clusterwide and flagged.render.image == "i:1"
    assert flagged.render.autoscaler == "keda"
    for everything in ("", "*"):
        without_flowmill_env(monkeypatch)
        monkeypatch.setenv("FLOWMILL_WATCH_NAMESPACES", everything)
        wide = OperatorSettings.from_env()
        assert wide.clusterwide
        assert operator_kwargs(wide) == {
            "liveness_endpoint": None,
            "clusterwide": True,
            "standalone": True,
        }
    monkeypatch.setenv("FLOWMILL_AUTOSCALER", "vpa")
    with pytest.raises(ValueError, match="FLOWMILL_AUTOSCALER"):
        OperatorSettings.from_env()
    monkeypatch.setenv("FLOWMILL_AUTOSCALER", "hpa")
    monkeypatch.setenv("FLOWMILL_PDB", "maybe")
    with pytest.raises(ValueError, match="FLOWMILL_PDB"):
        RenderSettings.from_env()
    without_flowmill_env(monkeypatch)
    kwargs = operator_kwargs(OperatorSettings(peering="p"))
    assert 1 <= kwargs["priority"] <= 1_000_000


def test_replay_status_follows_its_job() -> None:
    """status.replay read off the reset Job: running -> Replaying, Complete ->
    Succeeded (and kept once the Job is pruned), Failed -> Degraded ReplayFailed with the
    Job's reason, phase Replaying meanwhile; a removed request clears it."""
    from flowmill.manifest import parse_pipeline
    from flowmill_operator.status import replayed_id

    pipeline, _ = sketch()
    doc = pipeline.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["replay"] = {"id": "r7", "step": "by-region", "fromOffset": 0}
    replay = parse_pipeline(doc)
    rendered = render(replay, TEST_RENDER, namespace=NS)
    job = naming.replay_job(replay.name, "by-region", "r7")
    key = ("Job", NS, job)

    def with_job(status: dict[str, Any]) -> dict[str, Any]:
        seen = all_ready(rendered)
        seen.children[key] = {**seen.children[key], "status": status}
        return status_of(replay, rendered, seen)

    running = with_job({"active": 1})
    assert running["phase"] == "Replaying"
    assert running["replay"] == {
        "id": "r7",
        "step": "by-region",
        "phase": "Replaying",
        "job": job,
        "message": "the step is at zero; the reset Job runs",
    }
    assert conditions(running)["Degraded"]["status"] == "False"
    assert replayed_id(running) is None

    failed = with_job(
        {
            "failed": 3,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                },
            ],
        }
    )
    assert failed["phase"] == "Replaying" and failed["replay"]["phase"] == "Failed"
    degraded = conditions(failed)["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "ReplayFailed"
    assert "BackoffLimitExceeded" in degraded["message"] and "r7" in degraded["message"]
    assert replayed_id(failed) is None

    done = with_job({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    assert done["replay"]["phase"] == "Succeeded" and replayed_id(done) == "r7"
    # Rendered again with the request finished: the step back, the Job gone, the record kept.
    again = render(replay, TEST_RENDER, namespace=NS, replayed="r7")
    assert key not in {(m["kind"], NS, m["metadata"]["name"]) for m in again.manifests}
    after = status_of(replay, again, all_ready(again), previous=done)
    assert after["phase"] == "Running" and after["replay"] == done["replay"]
    assert (
        status_of(
            pipeline, render(pipeline, TEST_RENDER, namespace=NS), all_ready(again), previous=done
        )["replay"]
        is None
    )
