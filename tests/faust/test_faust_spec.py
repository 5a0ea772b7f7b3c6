"""The `faust` step kind in the spec: what it accepts, the errors naming the field, and
the names derived for it (its group, its Tables' changelog topics)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from flowmill.spec import (
    Pipeline,
    all_topics,
    consumer_group,
    faust_app_id,
    faust_changelog_topic,
)

BASE: dict[str, Any] = {
    "apiVersion": "flowmill.dev/v1alpha1",
    "kind": "Pipeline",
    "metadata": {"name": "fr"},
    "spec": {
        "topics": [
            {"name": "trips", "partitions": 4, "replicas": 2},
            {"name": "flags", "partitions": 2},
        ],
        "steps": [
            {
                "name": "rules",
                "from": "trips",
                "faust": {
                    "app": "fraud_rules:app",
                    "agent": "detect",
                    "outputs": {"fraud-flags": "flags"},
                    "tables": ["rider-trips", "counts"],
                },
            }
        ],
    },
}


def pipeline(**faust: Any) -> Pipeline:
    doc = copy.deepcopy(BASE)
    step = doc["spec"]["steps"][0]
    step["faust"].update({k: v for k, v in faust.items() if not k.startswith("step_")})
    step.update({k[5:]: v for k, v in faust.items() if k.startswith("step_")})
    return Pipeline.model_validate(doc)


def error_at(**faust: Any) -> tuple[str, str]:
    with pytest.raises(ValidationError) as caught:
        pipeline(**faust)
    (error,) = caught.value.errors()
    return ".".join(str(part) for part in error["loc"]), error["msg"]


def test_app_id_is_the_step_group_and_tables_get_changelogs() -> None:
    p = pipeline()
    assert faust_app_id("fr", "rules") == consumer_group("fr", "rules") == "flowmill.fr.rules"
    internal = [t for t in all_topics(p) if t.step == "rules"]
    assert [t.name for t in internal] == [
        "flowmill.fr.rules-rider-trips-changelog",
        "flowmill.fr.rules-counts-changelog",
    ]
    assert faust_changelog_topic("fr", "rules", "counts") == internal[1].name
    # Co-partitioned with the input and as durable as it, compacted like Faust's own.
    assert {(t.partitions, t.replicas) for t in internal} == {(4, 2)}
    assert all(t.config == {"cleanup.policy": "compact"} for t in internal)
    assert [name for _, name in p.spec.steps[0].outputs()] == ["flags"]


def test_undeclared_output_names_the_field() -> None:
    loc, msg = error_at(outputs={"fraud-flags": "nowhere"})
    assert loc == "spec.steps.0.faust.outputs.fraud-flags"
    assert "'nowhere' is not declared" in msg


def test_an_output_back_to_the_input_is_a_cycle() -> None:
    loc, msg = error_at(outputs={"fraud-flags": "trips"})
    assert loc == "spec.steps.0.faust.outputs.fraud-flags"
    assert "writes back to its own input" in msg


def test_built_in_processing_is_refused_on_a_faust_step() -> None:
    loc, msg = error_at(step_filter="fare > 0", step_keyBy="rider_id")
    assert loc == "spec.steps.0"
    assert "remove filter, keyBy" in msg


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("app", "fraud_rules", "spec.steps.0.faust.app"),
        ("agent", "no spaces", "spec.steps.0.faust.agent"),
        ("tables", ["a", "a"], "spec.steps.0.faust"),
        ("tables", ["bad/name"], "spec.steps.0.faust.tables.0"),
        ("code", {}, "spec.steps.0.faust.code"),
    ],
)
def test_bad_fields_are_named(field: str, value: Any, where: str) -> None:
    loc, _ = error_at(**{field: value})
    assert loc == where
