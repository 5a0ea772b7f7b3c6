"""Status of topic management, as pure functions: which mode, what admin mode reports,
and that the record of created topics survives a sync that could not run."""

from __future__ import annotations

from flowmill.manifest import parse_pipeline
from flowmill.spec import Pipeline
from flowmill_operator.render import render
from flowmill_operator.status import Observation, pipeline_status
from flowmill_operator.topic_admin import TopicReport, TopicSync
from tests.operator.fixtures import TEST_RENDER

NS = "ns"


def pipeline(mode: str | None) -> Pipeline:
    kafka: dict[str, str] = {"bootstrapServers": "127.0.0.1:9092"}
    if mode:
        kafka["topicManagement"] = mode
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "p", "namespace": NS},
            "spec": {"kafka": kafka, "topics": [{"name": "a"}, {"name": "b", "partitions": 2}]},
        }
    )


def status(
    p: Pipeline, seen: Observation, previous: dict | None = None, **settings: object
) -> dict:
    rendered = render(p, TEST_RENDER.model_copy(update=settings), namespace=NS)
    return pipeline_status(
        p, rendered, seen, namespace=NS, generation=1, previous=previous or {}, prune_errors=[]
    )


def condition(st: dict, kind: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == kind)


def test_the_mode_comes_from_the_spec_else_the_operator() -> None:
    assert status(pipeline(None), Observation())["topicManagement"] == "unmanaged"
    assert (
        status(pipeline("unmanaged"), Observation(), topic_management="admin")["topicManagement"]
        == "unmanaged"
    )
    st = status(pipeline(None), Observation(), topic_management="admin")
    assert st["topicManagement"] == "admin"
    assert condition(st, "TopicsReady")["reason"] == "KafkaUnreachable"


def test_admin_mode_reports_each_topic_and_refuses_shrinks_as_degraded() -> None:
    sync = TopicSync(
        topics=[
            TopicReport("a", 1, "Ready", True),
            TopicReport(
                "b", 4, "ShrinkRefused", False, "topic b has 4 partitions and the spec asks for 2"
            ),
        ],
        created=["a"],
    )
    st = status(pipeline("admin"), Observation(topic_sync=sync))
    assert st["topics"] == [
        {"name": "a", "partitions": 1, "state": "Ready", "created": True},
        {
            "name": "b",
            "partitions": 4,
            "state": "ShrinkRefused",
            "created": False,
            "message": "topic b has 4 partitions and the spec asks for 2",
        },
    ]
    topics = condition(st, "TopicsReady")
    assert (topics["status"], topics["reason"]) == ("False", "PartitionShrinkRefused")
    degraded = condition(st, "Degraded")
    assert degraded["status"] == "True" and "4 partitions" in degraded["message"]


def test_the_created_record_is_kept_when_kafka_cannot_be_asked() -> None:
    record = [{"name": "a", "partitions": 1, "state": "Ready", "created": True}]
    seen = Observation(topic_error="Kafka at 127.0.0.1:9092: NoBrokersAvailable")
    st = status(pipeline("admin"), seen, previous={"topics": record})
    assert st["topics"] == record
    assert "NoBrokersAvailable" in condition(st, "TopicsReady")["message"]
